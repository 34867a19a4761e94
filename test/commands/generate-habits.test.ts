/**
 * `onestep generate` habits brought from A1111 / diffusers / sd.cpp, through the built CLI: -p prompts, a negative
 * prompt from a file, and the `parameters` text that A1111's PNG Info parser reads back field for field.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { convertCheckpoint } from '../../src/convert.js';
import { onestep } from '../support/cli.js';
import { FIXTURES, ROOT } from '../support/fixtures.js';

/**
 * A1111's parse_generation_parameters (modules/infotext_utils.py), rewritten here: the last line is the settings
 * line when it has at least 3 `key: value` pairs (values maybe JSON-quoted); "Negative prompt:" starts the negative
 * prompt; the lines before it are the prompt.
 */
function parseA1111(text: string): { prompt: string; negative: string; settings: Record<string, string> } {
  const RE_PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
  const lines = text.trim().split('\n');
  let last = lines[lines.length - 1];
  const settings: Record<string, string> = {};
  if ([...last.matchAll(RE_PARAM)].length < 3) last = '';
  else lines.pop();
  for (const m of last.matchAll(RE_PARAM)) settings[m[1].trim()] = m[2].startsWith('"') ? JSON.parse(m[2]) : m[2];
  let prompt = '';
  let negative = '';
  let done = false;
  for (const [i, line] of lines.entries()) {
    if (line.startsWith('Negative prompt:')) {
      done = true;
      negative += line.slice(16).trim();
    } else if (done) negative += '\n' + line;
    else prompt += (i ? '\n' : '') + line;
  }
  return { prompt, negative, settings };
}

describe('onestep generate: CLI habits', function () {
  this.timeout(300_000);
  let dir: string;
  let model: string;
  before(async () => {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'commands', 'generate.js'))) execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'pipe' });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-habits-'));
    model = path.join(dir, 'model');
    await convertCheckpoint(path.join(FIXTURES, 'tiny-sd15'), { out: model });
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('-p prompts (a leading # or { is text) and --negative-prompt-file give what the same JSONL and --negative-prompt give', async () => {
    const negFile = path.join(dir, 'negative.txt');
    fs.writeFileSync(negFile, 'blurry, low quality\n');
    const common = ['--model', model, '--seed', '9', '--guidance', '2', '--device', 'cpu', '--quiet', '--batch-size', '2'];
    const a = await onestep('generate', '-p', '# a cat', '-p', '{a dog}', '--negative-prompt-file', negFile, '-o', path.join(dir, 'a'), ...common);
    assert.equal(a.code, 0, a.stderr);
    const jsonl = path.join(dir, 'p.jsonl');
    fs.writeFileSync(jsonl, [JSON.stringify({ prompt: '# a cat' }), JSON.stringify({ prompt: '{a dog}' })].join('\n') + '\n');
    const b = await onestep('generate', jsonl, '--negative-prompt', 'blurry, low quality', '-o', path.join(dir, 'b'), ...common);
    assert.equal(b.code, 0, b.stderr);
    const files = fs.readdirSync(path.join(dir, 'a')).filter((f) => f.endsWith('.png')).sort();
    assert.deepEqual(files, ['000000-9.png', '000001-10.png']);
    for (const f of files) assert.ok(fs.readFileSync(path.join(dir, 'a', f)).equals(fs.readFileSync(path.join(dir, 'b', f))), f);

    const meta = await sharp(path.join(dir, 'a', files[0])).metadata();
    const text = meta.comments!.find((c) => c.keyword === 'parameters')!.text;
    const parsed = parseA1111(text);
    assert.equal(parsed.prompt, '# a cat');
    assert.equal(parsed.negative, 'blurry, low quality');
    assert.deepEqual(
      { ...parsed.settings, 'Model hash': parsed.settings['Model hash'].length, Version: parsed.settings.Version.replace(/[\d.]+$/, 'N') },
      { Steps: '1', Sampler: 'onestep', 'CFG scale': '2.0', Seed: '9', Size: '64x64', 'Model hash': 10, Model: 'tiny-sd15', Version: 'onestep N' },
    );
    const missing = await onestep('generate', '-p', 'x', '--negative-prompt-file', path.join(dir, 'nope.txt'), '--model', model, '-o', path.join(dir, 'c'));
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /Error: .*nope\.txt: no such negative prompt file/);
    const none = await onestep('generate', '--model', model);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /Error: No prompts given/);
  });

  it('--images-per-prompt with a folder of init images: every image of prompt i starts from its i-th file', async () => {
    const inits = path.join(dir, 'inits');
    fs.mkdirSync(inits);
    for (const [k, name] of ['a.png', 'b.png'].entries()) {
      const px = Buffer.alloc(64 * 64 * 3, 0);
      for (let i = 0; i < px.length; i++) px[i] = (i * (k + 3) * 37) % 251;
      await sharp(px, { raw: { width: 64, height: 64, channels: 3 } }).png().toFile(path.join(inits, name));
    }
    const common = ['--model', model, '--device', 'cpu', '--quiet', '--strength', '0.6'];
    const txt = path.join(dir, 'two.txt');
    fs.writeFileSync(txt, 'a cat\na dog\n');
    const a = await onestep('generate', txt, '--init-image', inits, '-n', '2', '--seed', '20', '-o', path.join(dir, 'init-a'), ...common);
    assert.equal(a.code, 0, a.stderr);
    // The same four images, one line each, naming its init image and seed.
    const jsonl = path.join(inits, '..', 'four.jsonl');
    fs.writeFileSync(jsonl, [['a cat', 'a.png', 20], ['a cat', 'a.png', 21], ['a dog', 'b.png', 22], ['a dog', 'b.png', 23]].map(([prompt, image, seed]) => JSON.stringify({ prompt, image: `inits/${image}`, seed })).join('\n') + '\n');
    const b = await onestep('generate', jsonl, '--seed', '0', '--name', '{index:06}', '-o', path.join(dir, 'init-b'), ...common);
    assert.equal(b.code, 0, b.stderr);
    const pixels = async (f: string) => (await sharp(f).raw().toBuffer()).toString('base64');
    for (let i = 0; i < 4; i++) {
      const fa = path.join(dir, 'init-a', `${String(i).padStart(6, '0')}-${20 + i}.png`);
      const fb = path.join(dir, 'init-b', `${String(i).padStart(6, '0')}.png`);
      assert.equal(await pixels(fa), await pixels(fb), `image ${i}`);
    }
  });
});
