import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import sharp from 'sharp';
import { imageOrdinal, imagesOf, planRun, type PlanOptions } from '../src/plan.js';
import { resolveSeed } from '../src/io/prompts.js';
import { runCli } from './support/cli.js';
import { ROOT } from './support/fixtures.js';

describe('plan', () => {
  it('image j of prompt i: index i*n + j, seed base + i*n + j; a line seed s gives s + j', () => {
    const n = 3;
    const seeds = [0, 1, 2].flatMap((i) => imagesOf({ index: i, line: i + 1, prompt: `p${i}` }, n).map((r) => [r.index, r.promptIndex, resolveSeed(r, 100n)]));
    assert.deepEqual(seeds, [
      [0, 0, 100n], [1, 0, 101n], [2, 0, 102n],
      [3, 1, 103n], [4, 1, 104n], [5, 1, 105n],
      [6, 2, 106n], [7, 2, 107n], [8, 2, 108n],
    ]);
    const own = imagesOf({ index: 4, line: 5, prompt: 'p', seed: 2n ** 64n - 2n }, 3).map((r) => resolveSeed(r, 100n));
    assert.deepEqual(own, [2n ** 64n - 2n, 2n ** 64n - 1n, 0n], 'wraps within 64 bits as the base seed rule does');
    assert.deepEqual(imagesOf({ index: 7, line: 8, prompt: 'p' }, 1).map((r) => [r.index, resolveSeed(r, 5n)]), [[7, 12n]], 'n = 1 is the plain rule');
  });

  it('ordinals count the images this process makes, under a cluster shard too', () => {
    assert.deepEqual([0, 1, 2, 3].map((i) => imageOrdinal(i, 1, undefined)), [0, 1, 2, 3]);
    // --shard 1/4 makes prompts 1, 5, 9: with 2 images each, image indices 2,3, 10,11, 18,19.
    assert.deepEqual([2, 3, 10, 11, 18, 19].map((i) => imageOrdinal(i, 2, { index: 1, count: 4 })), [0, 1, 2, 3, 4, 5]);
  });

  describe('planRun (generate --dry-run)', () => {
    let dir: string;
    before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-plan-'))));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const base = (extra: Partial<PlanOptions> = {}): PlanOptions => ({
      seed: 10n,
      imagesPerPrompt: 1,
      outputFormat: 'files',
      shardSize: 1000,
      out: path.join(dir, 'out'),
      resume: false,
      strict: false,
      nameTemplate: '{index:06}-{seed}',
      format: 'png',
      ...extra,
    });
    const jsonl = (lines: object[]) => Readable.from(lines.map((l) => JSON.stringify(l) + '\n'));

    it('counts prompts, bad lines, images per prompt, sizes and seeds as generate would; lists the first images with their files', async () => {
      const issues: number[] = [];
      const plan = await planRun(jsonl([{ prompt: 'a' }, { prompt: 'b', width: 128 }, { prompt: 1 }, { prompt: 'd', seed: 500 }]), base({ imagesPerPrompt: 2, defaultSize: { width: 64, height: 64 }, list: 3, onIssue: (l) => issues.push(l) }));
      assert.deepEqual(issues, [3]);
      assert.deepEqual([plan.prompts, plan.bad_lines, plan.images, plan.to_generate], [3, 1, 6, 6]);
      assert.deepEqual(plan.sizes, { '64x64': 4, '128x64': 2 });
      // Seeds 10+0, 10+1, 10+2, 10+3 and the line's own 500, 501 (the bad line keeps indices 4 and 5).
      assert.deepEqual([plan.seed_min, plan.seed_max], ['10', '501']);
      assert.deepEqual(plan.first.map((f) => [f.index, f.prompt_index, f.seed, f.size, f.to]), [[0, 0, '10', '64x64', '000000-10.png'], [1, 0, '11', '64x64', '000001-11.png'], [2, 1, '12', '128x64', '000002-12.png']]);
      const unknown = await planRun(jsonl([{ prompt: 'a' }]), base());
      assert.deepEqual(unknown.sizes, { 'model default': 1 });
    });

    it('webdataset under a cluster shard: the tar shards it would write; --resume counts what the folder holds', async () => {
      const prompts = Array.from({ length: 40 }, (_, i) => ({ prompt: `p${i}` }));
      const plan = await planRun(jsonl(prompts), base({ outputFormat: 'webdataset', shardSize: 4, shard: { index: 1, count: 4 } }));
      assert.deepEqual([plan.prompts, plan.to_generate, plan.shard], [10, 10, '1/4']);
      assert.deepEqual(plan.tar_shards, ['00000.tar', '00001.tar', '00002.tar']);
      assert.equal(plan.first[4].to, '00001.tar/000017-27');
      const out = path.join(dir, 'wds');
      fs.mkdirSync(out);
      fs.writeFileSync(path.join(out, '00000.tar'), '');
      const line = (index: number, shard: string) => JSON.stringify({ index, prompt: `p${index}`, seed: 10 + index, width: 8, height: 8, file: `${index}.png`, model: 'm', shard }) + '\n';
      fs.writeFileSync(path.join(out, 'manifest.jsonl'), [1, 5, 9, 13].map((i) => line(i, '00000.tar')).join('') + line(17, '00001.tar'));
      const resumed = await planRun(jsonl(prompts), base({ out, resume: true, outputFormat: 'webdataset', shardSize: 4, shard: { index: 1, count: 4 } }));
      assert.deepEqual([resumed.already_done, resumed.to_generate, resumed.tar_shards], [4, 6, ['00001.tar', '00002.tar']]);
    });

    it('image-to-image: an init image gives its size (floored to 8) unless the line or flags give one', async () => {
      const img = path.join(dir, 'init.png');
      await sharp({ create: { width: 100, height: 76, channels: 3, background: '#808080' } }).png().toFile(img);
      const promptFile = path.join(dir, 'i2i.jsonl');
      fs.writeFileSync(promptFile, [{ prompt: 'a', image: 'init.png' }, { prompt: 'b', image: 'init.png', width: 64 }, { prompt: 'c' }].map((l) => JSON.stringify(l)).join('\n') + '\n');
      const plan = await planRun(promptFile, base({ promptFile, defaultSize: { width: 32, height: 32 } }));
      assert.equal(plan.image_to_image, 2);
      assert.deepEqual(plan.first.map((f) => f.size), ['96x72', '64x72', '32x32']);
      const all = await planRun(promptFile, base({ promptFile, initImage: img, width: 48 }));
      assert.deepEqual([all.image_to_image, all.first.map((f) => f.size)], [3, ['48x72', '64x72', '48x72']]);
    });

    it('the CLI: --dry-run loads and converts nothing and writes nothing', async function () {
      this.timeout(120_000);
      if (!fs.existsSync(path.join(ROOT, 'dist', 'commands', 'generate.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'pipe' });
      const cache = path.join(dir, 'cache');
      const out = path.join(dir, 'never');
      const saved = process.env.ONESTEP_CACHE;
      process.env.ONESTEP_CACHE = cache;
      try {
        const res = await runCli('run.js', ['generate', '-p', 'a cat', '-p', 'a dog', '-n', '3', '--seed', '5', '--width', '128', '--height', '96', '-o', out, '--dry-run', '--json']);
        assert.equal(res.code, 0, res.stderr);
        const plan = JSON.parse(res.stdout);
        assert.deepEqual([plan.images, plan.seed_min, plan.seed_max, plan.sizes], [6, '5', '10', { '128x96': 6 }]);
        assert.match(res.stderr, /not converted yet/);
        assert.equal(fs.existsSync(out), false, 'no output folder');
        assert.deepEqual(fs.existsSync(cache) ? fs.readdirSync(cache).filter((f) => f !== 'hashes') : [], [], 'no model converted');
        const both = await runCli('run.js', ['generate', 'x.txt', '-p', 'a cat', '--dry-run']);
        assert.equal(both.code, 1);
        assert.match(both.stderr, /Error: Prompts come from a file or from -p\/--prompt, not both/);
      } finally {
        if (saved === undefined) delete process.env.ONESTEP_CACHE;
        else process.env.ONESTEP_CACHE = saved;
      }
    });
  });
});
