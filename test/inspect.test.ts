import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync, readdirSync, statSync, writeFileSync, ftruncateSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatInspectReport, inspectPath, type InspectReport } from '../src/inspect.js';
import { OnestepError } from '../src/errors.js';
import { FIXTURES } from './support/fixtures.js';

// ---------------------------------------------------------------------------------------------------------------
// An independent reading of safetensors headers (8-byte length + JSON), sharing no code with src/.

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

interface Header {
  metadata: Record<string, string>;
  tensors: Map<string, HeaderEntry>;
}

function readHeader(file: string): Header {
  const fd = openSync(file, 'r');
  try {
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const n = Number(lenBuf.readBigUInt64LE(0));
    const buf = Buffer.alloc(n);
    readSync(fd, buf, 0, n, 8);
    const json = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
    const metadata = (json.__metadata__ ?? {}) as Record<string, string>;
    delete json.__metadata__;
    return { metadata, tensors: new Map(Object.entries(json as Record<string, HeaderEntry>)) };
  } finally {
    closeSync(fd);
  }
}

const SIZES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };

/** Writes a valid safetensors file from header entries alone; the data section is a sparse run of zeros. */
function writeHeaderOnly(file: string, entries: { name: string; dtype: string; shape: number[] }[], metadata?: Record<string, string>): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const e of entries) {
    const bytes = e.shape.reduce((a, b) => a * b, SIZES[e.dtype]);
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([prefix, json]));
  const fd = openSync(file, 'r+');
  try {
    ftruncateSync(fd, 8 + json.length + offset);
  } finally {
    closeSync(fd);
  }
}

function entriesOf(file: string): { name: string; dtype: string; shape: number[] }[] {
  return [...readHeader(file).tensors].map(([name, e]) => ({ name, dtype: e.dtype, shape: e.shape }));
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

interface Expected {
  parameters: number;
  tensors: number;
  dtypes: Record<string, number>;
}

function tallyBy(tensors: Iterable<[string, HeaderEntry]>, componentOf: (key: string) => string | undefined): Record<string, Expected> {
  const out: Record<string, Expected> = {};
  for (const [key, e] of tensors) {
    const c = componentOf(key);
    if (!c) continue;
    const x = (out[c] ??= { parameters: 0, tensors: 0, dtypes: {} });
    x.parameters += numel(e.shape);
    x.tensors += 1;
    x.dtypes[e.dtype] = (x.dtypes[e.dtype] ?? 0) + numel(e.shape);
  }
  return out;
}

function allParameters(files: string[]): number {
  let n = 0;
  for (const f of files) for (const e of readHeader(f).tensors.values()) n += numel(e.shape);
  return n;
}

/** Each weight folder of a diffusers pipeline, as a component. */
function expectedFolder(dir: string): { components: Record<string, Expected>; files: string[] } {
  const components: Record<string, Expected> = {};
  const files: string[] = [];
  for (const sub of readdirSync(dir).sort()) {
    if (!statSync(join(dir, sub)).isDirectory()) continue;
    for (const f of readdirSync(join(dir, sub)).filter((n) => n.endsWith('.safetensors'))) {
      files.push(join(dir, sub, f));
      Object.assign(components, tallyBy(readHeader(join(dir, sub, f)).tensors, () => sub));
    }
  }
  return { components, files };
}

/** LDM single-file prefixes; `skip` drops tensors onestep has no use for. */
function expectedSingle(file: string, skip: (key: string) => boolean): Record<string, Expected> {
  const prefixes: [string, string][] = [
    ['model.diffusion_model.', 'unet'],
    ['first_stage_model.', 'vae'],
    ['cond_stage_model.', 'text_encoder'],
  ];
  return tallyBy(readHeader(file).tensors, (key) => (skip(key) ? undefined : prefixes.find(([p]) => key.startsWith(p))?.[1]));
}

/** DDPM schedule buffers are top-level names without a dot; position_ids is an integer buffer. */
const isBuffer = (key: string) => !key.includes('.') || key.endsWith('.position_ids');

function assertComponents(report: InspectReport, expected: Record<string, Expected>): void {
  assert.deepEqual(Object.keys(report.components).sort(), Object.keys(expected).sort());
  for (const [name, e] of Object.entries(expected)) {
    assert.deepEqual(report.components[name], e, name);
  }
  const total = Object.values(expected).reduce((a, c) => a + c.parameters, 0);
  assert.equal(report.totalParameters, total);
}

function assertNothingLost(report: InspectReport, files: string[]): void {
  assert.equal(report.totalParameters + report.unused.parameters, allParameters(files), 'components + unused = every stored parameter');
}

// ---------------------------------------------------------------------------------------------------------------

describe('inspect: fixtures', () => {
  it('tiny-sd15.safetensors: single-file SD 1.x, counts per LDM prefix', async () => {
    const file = join(FIXTURES, 'tiny-sd15.safetensors');
    const r = await inspectPath(file);
    assert.equal(r.kind, 'checkpoint');
    assert.equal(r.layout, 'single-file');
    assert.equal(r.family, 'sd1');
    assert.equal(r.convertible, true);
    assertComponents(r, expectedSingle(file, isBuffer));
    assertNothingLost(r, [file]);
    assert.equal(r.unused.tensors, 13); // 12 DDPM buffers + position_ids (fixtures README)
    assert.deepEqual(Object.keys(r.components), ['unet', 'text_encoder', 'vae']); // fixed order, not the file's
    assert.deepEqual(r.warnings, []);
    assert.equal(r.config?.unet.cross_attention_dim, 32);
  });

  it('tiny-sd15/: diffusers SD 1.x, counts per component folder, same numbers as the single file', async () => {
    const dir = join(FIXTURES, 'tiny-sd15');
    const r = await inspectPath(dir);
    const { components, files } = expectedFolder(dir);
    assert.equal(r.layout, 'diffusers');
    assert.equal(r.family, 'sd1');
    assertComponents(r, components);
    assertNothingLost(r, files);
    assert.equal(r.metadata['unet/format'], 'pt');
    assert.equal(r.config?.scheduler._class_name, 'PNDMScheduler');
    const single = await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'));
    for (const c of ['unet', 'vae', 'text_encoder']) assert.equal(r.components[c].parameters, single.components[c].parameters, c);
  });

  it('tiny-sd21.safetensors: single-file SD 2.x; the whole OpenCLIP tower is the text encoder, logit_scale unused', async () => {
    const file = join(FIXTURES, 'tiny-sd21.safetensors');
    const r = await inspectPath(file);
    assert.equal(r.layout, 'single-file');
    assert.equal(r.family, 'sd2');
    // The last block belongs to the text encoder (SD 2.x's output layer is the penultimate one: the notes say so).
    assertComponents(r, expectedSingle(file, (k) => isBuffer(k) || k === 'cond_stage_model.model.logit_scale'));
    assertNothingLost(r, [file]);
    assert.ok(r.notes.some((n) => /penultimate/.test(n)));
  });

  it('tiny-sd21/: diffusers SD 2.x', async () => {
    const dir = join(FIXTURES, 'tiny-sd21');
    const r = await inspectPath(dir);
    const { components, files } = expectedFolder(dir);
    assert.equal(r.layout, 'diffusers');
    assert.equal(r.family, 'sd2');
    assertComponents(r, components);
    assertNothingLost(r, files);
    assert.equal(r.unused.tensors, 0);
  });

  it('tiny-pixart/: diffusers PixArt-α with transformer, T5 text encoder and VAE', async () => {
    const dir = join(FIXTURES, 'tiny-pixart');
    const r = await inspectPath(dir);
    const { components, files } = expectedFolder(dir);
    assert.equal(r.family, 'pixart-alpha');
    assert.equal(r.layout, 'diffusers');
    assert.deepEqual(Object.keys(components).sort(), ['text_encoder', 'transformer', 'vae']);
    assertComponents(r, components);
    assertNothingLost(r, files);
    assert.deepEqual(r.components.transformer.dtypes, { F32: components.transformer.parameters });
    assert.equal(r.config?.transformer.num_layers, 2);
  });

  for (const [name, style, prefixes, modules, pairs] of [
    ['tiny-sd15-kohya', 'kohya', { lora_unet_: 'unet', lora_te_: 'text_encoder' }, 86, [[2, 1], [4, 2], [4, 8]]],
    ['tiny-sd15-peft', 'peft', { 'unet.': 'unet', 'text_encoder.': 'text_encoder' }, 37, [[4, 4]]],
  ] as const) {
    it(`loras/${name}: ${style} LoRA, components, modules and rank/alpha as the fixtures README lists them`, async () => {
      const file = join(FIXTURES, 'loras', `${name}.safetensors`);
      const r = await inspectPath(file);
      assert.equal(r.kind, 'lora');
      assert.equal(r.layout, 'lora');
      assert.equal(r.lora?.keyStyle, style);
      // Cross-attention width 32 belongs to no released model: both one-text-encoder families fit.
      assert.equal(r.family, 'sd1|sd2');
      const expected = tallyBy(readHeader(file).tensors, (k) => Object.entries(prefixes).find(([p]) => k.startsWith(p))?.[1]);
      assertComponents(r, expected);
      assertNothingLost(r, [file]);
      assert.equal(r.lora?.modules, modules);
      assert.deepEqual(r.lora?.rankAlpha.map((p) => [p.rank, p.alpha]), pairs);
      assert.deepEqual(r.metadata, readHeader(file).metadata);
      const text = formatInspectReport(r);
      assert.match(text, new RegExp(`Modules: +${modules} `));
      assert.match(text, /Family: +SD 1\.x or SD 2\.x/);
    });
  }

  it('human output names layout, family and every component count', async () => {
    const r = await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'));
    const text = formatInspectReport(r);
    assert.match(text, /Layout: +single file/);
    assert.match(text, /Family: +SD 1\.x/);
    for (const [c, v] of Object.entries(r.components)) assert.match(text, new RegExp(`${c} +${v.parameters.toLocaleString('en-US')} `));
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('inspect: synthetic headers (data sections are sparse zeros)', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'onestep-inspect-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const sd15 = () => entriesOf(join(FIXTURES, 'tiny-sd15.safetensors'));
  const sd21 = () => entriesOf(join(FIXTURES, 'tiny-sd21.safetensors'));

  it('SDXL keys that make no whole SDXL: family sdxl, not convertible (saying why), counts per SGM prefix', async () => {
    const entries = [
      ...sd15().map((e) => ({ ...e, name: e.name.replace(/^cond_stage_model\./, 'conditioner.embedders.0.') })),
      ...sd21()
        .filter((e) => e.name.startsWith('cond_stage_model.'))
        .map((e) => ({ ...e, name: e.name.replace(/^cond_stage_model\./, 'conditioner.embedders.1.') })),
      { name: 'model.diffusion_model.label_emb.0.0.weight', dtype: 'F16', shape: [64, 256] },
    ];
    const file = join(dir, 'sdxl.safetensors');
    writeHeaderOnly(file, entries, { 'modelspec.architecture': 'stable-diffusion-xl-v1-base' });
    const r = await inspectPath(file);
    assert.equal(r.family, 'sdxl');
    assert.equal(r.convertible, false);
    const sum = (re: RegExp) => entries.filter((e) => re.test(e.name)).reduce((a, e) => a + numel(e.shape), 0);
    assert.equal(r.components.unet.parameters, sum(/^model\.diffusion_model\./));
    assert.equal(r.components.vae.parameters, sum(/^first_stage_model\./));
    assert.equal(r.components.text_encoder.parameters, sum(/^conditioner\.embedders\.0\.(?!.*position_ids$)/));
    assert.equal(r.components.text_encoder_2.parameters, sum(/^conditioner\.embedders\.1\.(?!model\.logit_scale$)/));
    assert.equal(r.unused.tensors, 14); // the DDPM buffers, position_ids and OpenCLIP's logit_scale
    // SD 1.5's UNet has no SDXL added embedding (only label_emb.0.0 was added): open refuses, inspect says why.
    assert.ok(r.warnings.some((w) => /cannot convert it as it is: .*sdxl\.safetensors: .*(add_embedding|text_time)/.test(w)), r.warnings.join('; '));
    assert.match(formatInspectReport(r), /modelspec\.architecture: stable-diffusion-xl-v1-base/);
  });

  it('EMA and plain UNet weights: warned, EMA copy counted once', async () => {
    const entries = sd15();
    const ema = entries
      .filter((e) => e.name.startsWith('model.diffusion_model.'))
      .map((e) => ({ ...e, name: 'model_ema.' + e.name.slice('model.'.length).replaceAll('.', '') }));
    const file = join(dir, 'ema.safetensors');
    writeHeaderOnly(file, [...entries, ...ema]);
    const r = await inspectPath(file);
    const plain = await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'));
    assert.equal(r.components.unet.parameters, plain.components.unet.parameters);
    assert.equal(r.unused.parameters, plain.unused.parameters + ema.reduce((a, e) => a + numel(e.shape), 0));
    assert.ok(r.warnings.some((w) => /EMA and plain UNet weights are both present/.test(w)), r.warnings.join('\n'));
  });

  it('mixed dtypes and unknown keys are warned', async () => {
    const entries = sd15().map((e) => (e.name.startsWith('first_stage_model.') || e.name === 'model.diffusion_model.out.2.bias' ? { ...e, dtype: 'F32' } : e));
    entries.push({ name: 'my_extra.thing.weight', dtype: 'F16', shape: [3, 3] });
    const file = join(dir, 'mixed.safetensors');
    writeHeaderOnly(file, entries);
    const r = await inspectPath(file);
    assert.equal(r.components.vae.dtypes.F32, r.components.vae.parameters);
    assert.ok(r.warnings.some((w) => /^unet mixes dtypes: F16 .*F32 \(4 parameters\)/.test(w)), r.warnings.join('\n'));
    assert.ok(r.warnings.some((w) => /1 tensor\(s\) onestep does not recognize, e\.g\. my_extra\.thing\.weight/.test(w)), r.warnings.join('\n'));
  });

  it('a 10 GB file is inspected from its header alone', async () => {
    const entries = [...sd15(), { name: 'zz_extra.huge', dtype: 'F16', shape: [5_000_000_000] }];
    const file = join(dir, 'huge.safetensors');
    writeHeaderOnly(file, entries);
    assert.ok(statSync(file).size > 10_000_000_000);
    const start = performance.now();
    const r = await inspectPath(file);
    const ms = performance.now() - start;
    console.log(`      inspect of a ${(statSync(file).size / 1e9).toFixed(1)} GB file: ${ms.toFixed(0)} ms`);
    assert.equal(r.family, 'sd1');
    assert.equal(r.unused.parameters - 5_000_000_000, (await inspectPath(join(FIXTURES, 'tiny-sd15.safetensors'))).unused.parameters);
  });

  it('an SD 1.x file onestep cannot open (a tensor missing): still reported by key prefix, with the reason', async () => {
    const entries = sd15().filter((e) => e.name !== 'model.diffusion_model.out.2.weight');
    const file = join(dir, 'incomplete.safetensors');
    writeHeaderOnly(file, entries);
    const r = await inspectPath(file);
    assert.equal(r.family, 'sd1');
    assert.equal(r.convertible, false);
    const sum = (prefix: string) => entries.filter((e) => e.name.startsWith(prefix)).reduce((a, e) => a + numel(e.shape), 0);
    assert.equal(r.components.unet.parameters, sum('model.diffusion_model.'));
    assert.equal(r.components.text_encoder.parameters, sum('cond_stage_model.') - 77); // position_ids is unused
    assert.ok(r.warnings.some((w) => w.startsWith('onestep cannot convert it as it is:') && /conv_out\.weight|out\.2\.weight/.test(w)), r.warnings.join('\n'));
  });

  it('a VAE alone (bare LDM keys): a component for convert --vae, counted under canonical names', async () => {
    const entries = sd15()
      .filter((e) => e.name.startsWith('first_stage_model.'))
      .map((e) => ({ ...e, name: e.name.slice('first_stage_model.'.length) }));
    const file = join(dir, 'vae.safetensors');
    writeHeaderOnly(file, entries);
    const r = await inspectPath(file);
    assert.equal(r.kind, 'component');
    assert.equal(r.family, 'unknown');
    assert.equal(r.convertible, false);
    assert.equal(r.components.vae.parameters, entries.reduce((a, e) => a + numel(e.shape), 0));
    assert.equal(r.unused.tensors, 0);
    assert.ok(r.notes.some((n) => /a VAE alone \(ldm keys\): convert it with the checkpoint it belongs to, `onestep convert <base> --vae /.test(n)), r.notes.join('; '));
    assert.match(formatInspectReport(r), /Kind: +VAE alone/);
  });

  it('a UNet alone, diffusers or SGM keys: a component for convert --unet; family from the cross-attention width', async () => {
    const file = join(FIXTURES, 'tiny-sdxl', 'unet', 'diffusion_pytorch_model.safetensors');
    const r = await inspectPath(file);
    assert.equal(r.kind, 'component');
    assert.equal(r.components.unet.parameters, entriesOf(file).reduce((a, e) => a + numel(e.shape), 0));
    assert.ok(r.notes.some((n) => /a UNet alone \(diffusers keys, cross-attention width 24\)/.test(n)));
    // SDXL's real width (2048) names the family; header-only copy of the SGM UNet keys with that width.
    const sgm = entriesOf(join(FIXTURES, 'tiny-sdxl.safetensors'))
      .filter((e) => e.name.startsWith('model.diffusion_model.'))
      .map((e) => ({ ...e, shape: /attn2\.to_[kv]\.weight$/.test(e.name) ? [e.shape[0], 2048] : e.shape }));
    const xl = join(dir, 'xl-unet.safetensors');
    writeHeaderOnly(xl, sgm);
    const r2 = await inspectPath(xl);
    assert.equal(r2.family, 'sdxl');
    assert.match(formatInspectReport(r2), /Kind: +UNet alone[\s\S]*Family: +SDXL/);
  });

  /** A pipeline folder whose weight folders link to the fixture's. */
  function pipelineFolder(name: string, index: Record<string, unknown>, links: Record<string, string>): string {
    const root = join(dir, name);
    mkdirSync(root);
    writeFileSync(join(root, 'model_index.json'), JSON.stringify(index));
    for (const [sub, target] of Object.entries(links)) symlinkSync(target, join(root, sub), 'dir');
    return root;
  }

  it('a diffusers folder with a safety checker: counted as a component onestep does not use', async () => {
    const fixture = join(FIXTURES, 'tiny-sd15');
    const index = { ...JSON.parse(readFileSync(join(fixture, 'model_index.json'), 'utf8')), safety_checker: ['stable_diffusion', 'StableDiffusionSafetyChecker'] };
    const root = pipelineFolder('with-checker', index, { unet: join(fixture, 'unet'), vae: join(fixture, 'vae'), text_encoder: join(fixture, 'text_encoder') });
    mkdirSync(join(root, 'safety_checker'));
    writeHeaderOnly(join(root, 'safety_checker', 'model.safetensors'), [{ name: 'vision_model.proj.weight', dtype: 'F16', shape: [7, 11] }]);
    const r = await inspectPath(root);
    const plain = await inspectPath(fixture);
    assert.equal(r.family, 'sd1');
    assert.deepEqual(r.components.safety_checker, { parameters: 77, tensors: 1, dtypes: { F16: 77 } });
    assert.equal(r.totalParameters, plain.totalParameters + 77);
    assert.equal(r.unused.tensors, 0);
    assert.ok(r.notes.includes('safety_checker/ is not used by onestep'));
  });

  it('an SDXL diffusers folder: family sdxl, counts per component folder', async () => {
    const sd15 = join(FIXTURES, 'tiny-sd15');
    const sd21 = join(FIXTURES, 'tiny-sd21');
    const index = {
      _class_name: 'StableDiffusionXLPipeline',
      unet: ['diffusers', 'UNet2DConditionModel'],
      vae: ['diffusers', 'AutoencoderKL'],
      text_encoder: ['transformers', 'CLIPTextModel'],
      text_encoder_2: ['transformers', 'CLIPTextModelWithProjection'],
      tokenizer: ['transformers', 'CLIPTokenizer'],
    };
    const root = pipelineFolder('sdxl', index, {
      unet: join(sd15, 'unet'),
      vae: join(sd15, 'vae'),
      text_encoder: join(sd15, 'text_encoder'),
      text_encoder_2: join(sd21, 'text_encoder'),
    });
    const r = await inspectPath(root);
    assert.equal(r.family, 'sdxl');
    assert.equal(r.layout, 'diffusers');
    assert.equal(r.convertible, false);
    const expected = expectedFolder(root).components;
    assertComponents(r, expected);
    assert.ok(r.components.text_encoder_2.parameters > 0);
    assert.equal(r.config?.text_encoder_2.hidden_act, 'gelu');
  });

  it('unreadable input is one OnestepError: missing path, pickle, truncated file, folder without model_index.json', async () => {
    const truncated = join(dir, 'truncated.safetensors');
    writeFileSync(truncated, readFileSync(join(FIXTURES, 'tiny-sd15.safetensors')).subarray(0, 100_000));
    const pickle = join(dir, 'model.ckpt');
    writeFileSync(pickle, Buffer.from([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0, 0, 0]));
    for (const [path, re] of [
      [join(dir, 'nope.safetensors'), /no such file/],
      [pickle, /pickle/],
      [truncated, /truncated|past the end|past the/],
      [dir, /model_index\.json/],
    ] as const) {
      await assert.rejects(inspectPath(path), (e: unknown) => e instanceof OnestepError && re.test(e.message), path);
    }
  });
});
