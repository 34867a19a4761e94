import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PickleError } from '../../src/pytorch/pickle.js';
import { PyTorchFile } from '../../src/pytorch/tensor-file.js';
import { writeSafetensors } from '../../src/safetensors/writer.js';
import { FIXTURES, ROOT, readSafetensors } from '../support/fixtures.js';
import { HOSTILE, Ops, PT, goldenRaw, legacyCheckpoint } from './helpers.js';

/** Every tensor of `file` equals the golden's: same names, dtype, shape and bytes. */
async function assertSameAsGolden(file: string, golden: string): Promise<number> {
  const g = goldenRaw(golden);
  const f = await PyTorchFile.open(file);
  try {
    assert.deepEqual([...f.tensors.keys()].sort(), [...g.tensors.keys()].sort());
    for (const [name, want] of g.tensors) {
      const info = f.info(name);
      assert.equal(info.dtype, want.dtype, name);
      assert.deepEqual(info.shape, want.shape, name);
      assert.ok(Buffer.from(await f.readRaw(name)).equals(Buffer.from(want.bytes)), `${name}: bytes differ`);
    }
    return g.tensors.size;
  } finally {
    await f.close();
  }
}

describe('pytorch/tensor-file', () => {
  it('dtypes.pt (zip) and dtypes-legacy.pt (legacy) read bit for bit as dtypes.safetensors: every dtype, views, 0-dim, empty', async () => {
    // Written by torch 1.13's torch.save: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL; transposed, sliced, strided,
    // expanded (stride 0) and channels_last views, two views of one storage, a Parameter, a tensor stored twice.
    for (const file of ['dtypes.pt', 'dtypes-legacy.pt']) assert.equal(await assertSameAsGolden(join(PT, file), join(PT, 'dtypes.safetensors')), 22);
    const f = await PyTorchFile.open(join(PT, 'dtypes.pt'));
    assert.deepEqual([f.container, f.protocol, f.placeholders], ['zip', 2, []]);
    assert.equal(f.info('transposed').byteOffset, -1, 'a strided view is no single range of the file');
    assert.equal(f.copySource('transposed'), undefined);
    assert.ok(f.copySource('f32'));
    assert.deepEqual([...(await f.readF32('bool'))], [...goldenRaw(join(PT, 'dtypes.safetensors')).tensors.get('bool')!.bytes]);
    await f.close();
    const legacy = await PyTorchFile.open(join(PT, 'dtypes-legacy.pt'));
    assert.equal(legacy.container, 'legacy');
    await legacy.close();
  });

  it('tiny-sd15.ckpt (a Lightning .ckpt): the state_dict entry, bit for bit as tiny-sd15.safetensors; callbacks stay inert', async () => {
    assert.equal(await assertSameAsGolden(join(PT, 'tiny-sd15.ckpt'), join(FIXTURES, 'tiny-sd15.safetensors')), 989);
    const f = await PyTorchFile.open(join(PT, 'tiny-sd15.ckpt'));
    assert.deepEqual(f.statePath, ['state_dict']);
    assert.deepEqual(f.placeholders, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint', 'pytorch_lightning.utilities.parsing.AttributeDict']);
    assert.match(f.describe(), /torch\.save zip container.*989 tensors from its 'state_dict' entry.*inert placeholders, never called: pytorch_lightning/);
    await f.close();
  });

  it("a diffusers .bin (plain dict, archive folder 'diffusion_pytorch_model/') and a kohya LoRA .pt match their goldens", async () => {
    // The test copy of tiny-sd15/unet stores the (float16-exact) weights as F16; the .bin holds them as F32.
    const golden = readSafetensors(join(FIXTURES, 'tiny-sd15', 'unet', 'diffusion_pytorch_model.safetensors'));
    const f = await PyTorchFile.open(join(PT, 'tiny-sd15-bin-unet', 'diffusion_pytorch_model.bin'));
    assert.deepEqual([...f.tensors.keys()].sort(), [...golden.keys()].sort());
    for (const [name, want] of golden) {
      assert.equal(f.info(name).dtype, 'F32');
      assert.deepEqual(f.info(name).shape, want.shape);
      assert.ok(Buffer.from((await f.readF32(name)).buffer).equals(Buffer.from(want.data.buffer)), name);
    }
    assert.deepEqual([f.container, f.statePath, f.placeholders], ['zip', [], []]);
    await f.close();
    assert.equal(await assertSameAsGolden(join(PT, 'tiny-sd15-kohya.pt'), join(FIXTURES, 'loras', 'tiny-sd15-kohya.safetensors')), 258);
  });

  describe('hostile checkpoints (pytorch/hostile/*.pt, *.bin): one clear error, or data calling nothing', () => {
    const refusals: Record<string, [rule: string, message: RegExp]> = {
      'zip-missing-storage.pt': ['missing-storage', /storage '1' is not in the archive \(no record zip-missing-storage\/data\/1\)/],
      'zip-storage-too-large.pt': ['storage-size', /declares 1099511627776 x FloatStorage = 4398046511104 bytes, record holds 64/],
      'zip-view-out-of-bounds.pt': ['call-args', /view needs 24 elements of storage '0', it has 16/],
      'zip-storage-type-global.pt': ['storage-type', /storage type <global posix\.system> is not a torch storage class/],
      'truncated.pt': ['zip', /not a readable torch\.save zip/],
      'legacy-truncated.pt': ['storage-truncated', /storage '56666313936320' needs 32 bytes, 16 left/],
      'legacy-huge-numel.pt': ['legacy-numel', /element count 4611686018427387904 in the data section, 64 in the pickle/],
    };
    it('covers every checkpoint fixture', () => {
      const files = readdirSync(HOSTILE).filter((f) => !f.endsWith('.pkl') && f !== 'README.md');
      assert.deepEqual(files.sort(), [...Object.keys(refusals), 'state-dict-os-system.bin'].sort());
    });
    for (const [file, [rule, message]] of Object.entries(refusals)) {
      it(`${file}: refused (${rule})`, async () => {
        await assert.rejects(PyTorchFile.open(join(HOSTILE, file)), (e: unknown) => {
          assert.ok(e instanceof PickleError, String(e));
          assert.equal(e.rule, rule);
          assert.match(e.message, message);
          assert.ok(e.message.startsWith(join(HOSTILE, file)), 'the message names the file');
          return true;
        });
      });
    }
    it("state-dict-os-system.bin: 'weight' = [1, 2, 3, 4], 'bias' (posix.system(...)) an inert placeholder", async () => {
      const f = await PyTorchFile.open(join(HOSTILE, 'state-dict-os-system.bin'));
      assert.deepEqual([...f.tensors.keys()], ['weight']);
      assert.deepEqual([...(await f.readF32('weight'))], [1, 2, 3, 4]);
      assert.deepEqual(f.placeholders, ['posix.system']);
      assert.match(f.skipped.get('bias') ?? '', /REDUCE of <global posix\.system>/);
      await f.close();
      assert.equal(existsSync('/tmp/onestep-pwned-state-dict-os-system'), false);
    });
    it('a plain pickle is interpreted inertly and refused as not a checkpoint', async () => {
      await assert.rejects(PyTorchFile.open(join(HOSTILE, 'os-system.pkl')), (e: unknown) => {
        assert.ok(e instanceof PickleError && e.rule === 'legacy-magic', String(e));
        assert.match(e.message, /plain pickle.*not a torch\.save checkpoint.*os\.system, kept inert and never called/);
        return true;
      });
      assert.equal(existsSync('/tmp/onestep-pwned-os-system'), false);
    });
  });

  it('round trip: the tensors read, written as safetensors in the golden\'s order and metadata, reproduce it byte for byte', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onestep-roundtrip-'));
    try {
      for (const [file, golden] of [
        ['dtypes.pt', join(PT, 'dtypes.safetensors')],
        ['dtypes-legacy.pt', join(PT, 'dtypes.safetensors')],
        ['tiny-sd15.ckpt', join(FIXTURES, 'tiny-sd15.safetensors')],
      ]) {
        const g = goldenRaw(golden);
        const f = await PyTorchFile.open(join(PT, file));
        const out = join(dir, `${file}.safetensors`);
        await writeSafetensors(
          out,
          g.order.map((name) => ({ name, dtype: f.info(name).dtype, shape: f.info(name).shape, data: () => f.readRaw(name) })),
          Object.keys(g.metadata).length ? g.metadata : undefined,
        );
        await f.close();
        assert.ok(readFileSync(out).equals(readFileSync(golden)), `${file} -> ${golden}`);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('memory stays at one tensor: a strided view reads only the storage span it covers', async () => {
    const bytes = readFileSync(join(PT, 'dtypes.pt'));
    assert.ok(bytes.length > 0);
    const f = await PyTorchFile.open(join(PT, 'dtypes.pt'));
    // expanded: [4, 3] with stride [0, 1] over a 3-element storage: 48 bytes out, 12 read.
    const reads: number[] = [];
    const handle = (f as unknown as { handle: { read: (...a: unknown[]) => Promise<{ bytesRead: number }> } }).handle;
    const read = handle.read.bind(handle);
    handle.read = (...a: unknown[]) => {
      reads.push(a[2] as number);
      return read(...a);
    };
    assert.equal((await f.readRaw('expanded')).length, 48);
    assert.deepEqual(reads, [12]);
    await f.close();
  });

  describe('malicious checkpoints written opcode by opcode (legacy container): nothing runs', () => {
    let dir: string;
    before(async () => (dir = await mkdtemp(join(tmpdir(), 'onestep-evil-'))));
    after(() => rm(dir, { recursive: true, force: true }));
    const marker = (name: string) => `/tmp/onestep-pwned-test-${process.pid}-${name}`;
    const weight = (o: Ops) => o.str('weight').floatTensor('0', 4, [2, 2], [1, 2]);
    const cases: [string, (m: string) => Uint8Array, (f: PyTorchFile | PickleError) => void][] = [
      [
        'a state dict with os.system("touch ...") beside a real tensor',
        (m) => weight(new Ops().proto(2).emptyDict().mark()).str('evil').global('os', 'system').str(`touch ${m}`).tuple1().reduce().setitems().stop().done(),
        (f) => {
          assert.ok(f instanceof PyTorchFile);
          assert.deepEqual([...f.tensors.keys()], ['weight']);
          assert.deepEqual(f.placeholders, ['os.system']);
        },
      ],
      [
        'builtins.eval as the storage type',
        (m) => new Ops().proto(2).emptyDict().str('w').global('torch._utils', '_rebuild_tensor_v2').mark().mark().str('storage').global('builtins', 'eval').str(`open('${m}','w')`).str('cpu').int(4).none().tuple().binpersid().int(0).int(4).tuple1().int(1).tuple1().raw(0x89).global('collections', 'OrderedDict').emptyTuple().reduce().tuple().reduce().setitem().stop().done(),
        (e) => assert.ok(e instanceof PickleError && e.rule === 'storage-type' && /builtins\.eval/.test(e.message)),
      ],
      [
        'the weight rebuilt by _rebuild_from_type_v2(posix.system, ...)',
        (m) => new Ops().proto(2).emptyDict().str('weight').global('torch._utils', '_rebuild_from_type_v2').mark().global('posix', 'system').global('builtins', 'object').str(`touch ${m}`).tuple1().emptyDict().tuple().reduce().setitem().stop().done(),
        (e) => assert.ok(e instanceof PickleError && e.rule === 'no-tensors', String(e)),
      ],
      [
        'the whole object is subprocess.Popen(["touch", ...])',
        (m) => new Ops().proto(2).global('subprocess', 'Popen').emptyList().str('touch').append().str(m).append().tuple1().reduce().stop().done(),
        (e) => assert.ok(e instanceof PickleError && e.rule === 'no-tensors' && /REDUCE of <global subprocess\.Popen>/.test(e.message), String(e)),
      ],
      [
        'BUILD on the state dict with an os.system call as its state',
        (m) => weight(new Ops().proto(2).emptyDict().mark()).setitems().global('os', 'system').str(`touch ${m}`).tuple1().reduce().build().stop().done(),
        (f) => {
          assert.ok(f instanceof PyTorchFile);
          assert.deepEqual(f.placeholders, ['os.system']);
        },
      ],
    ];
    for (const [title, build, check] of cases) {
      it(title, async () => {
        const m = marker(title.replace(/\W+/g, '-').slice(0, 30));
        const file = join(dir, 'evil.pt');
        const object = build(m);
        // Storage '0' is listed only when the object names it (a listed storage nothing uses is refused).
        const usesStorage = Buffer.from(object).includes(Buffer.from('FloatStorage'));
        await writeFile(file, legacyCheckpoint(object, usesStorage ? { '0': [1, 2, 3, 4] } : {}));
        let outcome: PyTorchFile | PickleError;
        try {
          outcome = await PyTorchFile.open(file);
        } catch (e) {
          assert.ok(e instanceof PickleError, String(e));
          outcome = e;
        }
        check(outcome);
        if (outcome instanceof PyTorchFile) {
          // A transposed [2, 2] view of [1, 2, 3, 4]: materialised row-major.
          assert.deepEqual([...(await outcome.readF32('weight'))], [1, 3, 2, 4]);
          await outcome.close();
        }
        assert.equal(existsSync(m), false, `${m} must not exist`);
      });
    }
  });

  it('under Node\'s permission model (reads only: no writes, no child processes) every hostile file ends in data or a typed error', async function () {
    // Uses the built dist/ (npm test builds first). Anything that tried to write a file or spawn a process would
    // fail with ERR_ACCESS_DENIED, which is no BadInputError: the child reports it and this test fails.
    this.timeout(60_000);
    assert.ok(existsSync(join(ROOT, 'dist', 'safetensors', 'tensor-file.js')), 'run `npm run build` first');
    const files = readdirSync(HOSTILE).filter((f) => f !== 'README.md').map((f) => join(HOSTILE, f));
    const script = `
      const { openTensorFile } = await import(${JSON.stringify(join(ROOT, 'dist', 'safetensors', 'tensor-file.js'))});
      const { BadInputError } = await import(${JSON.stringify(join(ROOT, 'dist', 'errors.js'))});
      const out = {};
      for (const f of ${JSON.stringify(files)}) {
        const t0 = performance.now();
        try {
          const t = await openTensorFile(f);
          for (const n of t.tensors.keys()) await t.readRaw(n);
          await t.close();
          out[f] = { ok: [...t.tensors.keys()], ms: performance.now() - t0 };
        } catch (e) {
          out[f] = { typed: e instanceof BadInputError, error: String(e && e.message), ms: performance.now() - t0 };
        }
      }
      let write = 'allowed', spawn = 'allowed';
      try { (await import('node:fs')).writeFileSync(${JSON.stringify(join(tmpdir(), `onestep-sandbox-probe-${process.pid}`))}, 'x'); } catch (e) { write = e.code; }
      try { (await import('node:child_process')).execFileSync('true'); } catch (e) { spawn = e.code; }
      console.log(JSON.stringify({ out, write, spawn }));`;
    const stdout = await new Promise<string>((resolve, reject) =>
      // Node 20/22 call the flag --experimental-permission; later releases --permission.
      execFile(process.execPath, [process.allowedNodeEnvironmentFlags.has('--permission') ? '--permission' : '--experimental-permission', `--allow-fs-read=${ROOT}`, '--no-warnings', '--input-type=module', '-e', script], { cwd: ROOT }, (err, out, errText) =>
        err ? reject(new Error(`${err.message}\n${errText}`)) : resolve(out),
      ),
    );
    const { out, write, spawn } = JSON.parse(stdout) as { out: Record<string, { ok?: string[]; typed?: boolean; error?: string; ms: number }>; write: string; spawn: string };
    assert.deepEqual([write, spawn], ['ERR_ACCESS_DENIED', 'ERR_ACCESS_DENIED'], 'the sandbox does refuse writes and processes');
    for (const f of files) {
      const r = out[f];
      assert.ok(r.ok || r.typed, `${f}: ${r.error}`);
      assert.ok(r.ms < 5000, `${f}: ${r.ms} ms`);
    }
    assert.deepEqual(out[join(HOSTILE, 'state-dict-os-system.bin')].ok, ['weight']);
    assert.equal(Object.values(out).filter((r) => r.ok).length, 1, 'every other hostile file is refused');
  });
});
