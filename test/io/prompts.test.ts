import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { BadInputError } from '../../src/errors.js';
import {
  countPrompts,
  formatPromptSummary,
  readPrompts,
  resolveSeed,
  type PromptIssue,
  type PromptRecord,
  type PromptSummary,
  type ReadPromptsOptions,
} from '../../src/io/prompts.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'onestep-prompts-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(name: string, content: string | Buffer): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, content);
  return path;
}

async function readAll(source: string | NodeJS.ReadableStream, opts: ReadPromptsOptions = {}) {
  const issues: PromptIssue[] = [];
  let summary: PromptSummary | undefined;
  const records: PromptRecord[] = [];
  for await (const r of readPrompts(source, { onIssue: (i) => issues.push(i), onSummary: (s) => (summary = s), ...opts })) records.push(r);
  return { records, issues, summary: summary! };
}

describe('io/prompts', () => {
  it('reads text: one prompt per line, blank and # lines skipped and not numbered', async () => {
    const path = await file('a.txt', '# header\na red fox\n\n  \n  a blue whale  \r\n   # indented comment\nlast line without newline');
    const { records, issues, summary } = await readAll(path);
    assert.deepEqual(records, [
      { index: 0, line: 2, prompt: 'a red fox' },
      { index: 1, line: 5, prompt: 'a blue whale' },
      { index: 2, line: 7, prompt: 'last line without newline' },
    ]);
    assert.deepEqual(issues, []);
    assert.deepEqual(summary, { prompts: 3, skipped: 0, indices: 3, format: 'text' });
    assert.equal(await countPrompts(path), 3);
  });

  it('reads JSONL with every key; a seed may be a number or a string of digits (above 2^53)', async () => {
    const lines = [
      JSON.stringify({ prompt: 'a cat', negative_prompt: 'blurry', seed: 7, width: 512, height: 768, guidance: 1.5, name: 'cat' }),
      '',
      JSON.stringify({ prompt: 'big seed', seed: '18446744073709551615' }),
      JSON.stringify({ prompt: 'nulls are absent', seed: null, name: null }),
    ];
    const path = await file('b.jsonl', lines.join('\n') + '\n');
    const { records, issues, summary } = await readAll(path);
    assert.deepEqual(issues, []);
    assert.deepEqual(records, [
      { index: 0, line: 1, prompt: 'a cat', negativePrompt: 'blurry', seed: 7n, width: 512, height: 768, guidance: 1.5, name: 'cat' },
      { index: 1, line: 3, prompt: 'big seed', seed: 18446744073709551615n },
      { index: 2, line: 4, prompt: 'nulls are absent' },
    ]);
    assert.equal(summary.format, 'jsonl');
    assert.equal(resolveSeed(records[0], 1000n), 7n);
    assert.equal(resolveSeed(records[2], 1000n), 1002n);
    assert.equal(resolveSeed({ index: 3 }, (1n << 64n) - 2n), 1n, 'base + index wraps within 64 bits');
  });

  it('reads SDXL size conditioning per line (original_size, crops_coords_top_left, target_size) and refuses bad pairs', async () => {
    const lines = [
      JSON.stringify({ prompt: 'sized', original_size: [2048, 1536], crops_coords_top_left: [0, 64], target_size: [1024, 768] }),
      JSON.stringify({ prompt: 'bad', original_size: [1024] }),
      JSON.stringify({ prompt: 'bad', crops_coords_top_left: [-1, 0] }),
    ];
    const { records, issues } = await readAll(await file('sdxl.jsonl', lines.join('\n') + '\n'));
    assert.deepEqual(records, [{ index: 0, line: 1, prompt: 'sized', originalSize: [2048, 1536], cropsCoordsTopLeft: [0, 64], targetSize: [1024, 768] }]);
    assert.deepEqual(issues.map((i) => i.line), [2, 3]);
    assert.match(issues[0].message, /"original_size" must be two whole numbers between 0 and 16384, like \[1024, 1024\], got an array/);
    assert.match(issues[1].message, /"crops_coords_top_left" must be two whole numbers/);
  });

  it('detects JSONL from the first non-blank line when the extension does not say', async () => {
    const path = await file('c.txt', '\n\n{"prompt": "x"}\n{"prompt": "y"}\n');
    const { records, summary } = await readAll(path);
    assert.equal(summary.format, 'jsonl');
    assert.deepEqual(records.map((r) => r.prompt), ['x', 'y']);
    // ...and a text file whose first line is not JSON stays text, even with a { later.
    const text = await readAll(await file('d.txt', 'plain\n{"prompt": "y"}\n'));
    assert.deepEqual(text.records.map((r) => r.prompt), ['plain', '{"prompt": "y"}']);
    // A BOM before the first { still means JSONL.
    const bom = await readAll(await file('e.txt', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"prompt": "z"}\n')])));
    assert.deepEqual(bom.records.map((r) => r.prompt), ['z']);
  });

  it('reports bad lines with their line numbers, skips them, and lets each keep its index', async () => {
    const lines = [
      Buffer.from('{"prompt": "ok 0"}'),
      Buffer.from('{"prompt": "bad json"'),
      Buffer.from('{"prompt": "unknown", "steps": 4}'),
      Buffer.concat([Buffer.from('{"prompt": "bad utf8 '), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]),
      Buffer.from('{"prompt": "size", "width": 500}'),
      Buffer.from('{"prompt": "seed", "seed": 1.5}'),
      Buffer.from('{"prompt": "seed", "seed": 9007199254740993}'),
      Buffer.from('{"prompt": "seed", "seed": "18446744073709551616"}'),
      Buffer.from('["not", "an", "object"]'),
      Buffer.from('{"negative_prompt": "no prompt"}'),
      Buffer.from('{"prompt": "ok 10", "height": 64}'),
    ];
    const path = await file('bad.jsonl', Buffer.concat(lines.flatMap((l) => [l, Buffer.from('\n')])));
    const { records, issues, summary } = await readAll(path);
    assert.deepEqual(records, [
      { index: 0, line: 1, prompt: 'ok 0' },
      { index: 10, line: 11, prompt: 'ok 10', height: 64 },
    ]);
    assert.deepEqual(issues.map((i) => i.line), [2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.match(issues[0].message, /invalid JSON/);
    assert.match(issues[1].message, /unknown key "steps"/);
    assert.match(issues[2].message, /invalid UTF-8/);
    assert.match(issues[3].message, /"width" must be a multiple of 8, got 500/);
    assert.match(issues[5].message, /write it as a string/);
    assert.match(issues[6].message, /64 bits/);
    assert.match(issues[8].message, /"prompt" must be a string, got nothing/);
    assert.deepEqual(summary, { prompts: 2, skipped: 9, indices: 11, format: 'jsonl' });
    assert.equal(formatPromptSummary(summary), '2 prompts read, 9 bad lines skipped');
    assert.equal(await countPrompts(path), 11);
  });

  it('detects invalid UTF-8 per line in text files too, without disturbing the neighbours', async () => {
    const content = Buffer.concat([Buffer.from('café\n'), Buffer.from([0x61, 0xff, 0x62, 0x0a]), Buffer.from('日本語\n')]);
    const { records, issues } = await readAll(await file('u.txt', content));
    assert.deepEqual(records.map((r) => [r.index, r.prompt]), [
      [0, 'café'],
      [2, '日本語'],
    ]);
    assert.deepEqual(issues, [{ line: 2, message: 'invalid UTF-8.' }]);
  });

  it('strict mode throws a BadInputError naming file:line', async () => {
    const path = await file('strict.jsonl', '{"prompt": "a"}\n{"prompt": "b", "seeds": 1}\n');
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const r of readPrompts(path, { strict: true })) seen.push(r.prompt);
      })(),
      (err: unknown) => err instanceof BadInputError && err.message.startsWith(`${path}:2: unknown key "seeds"`),
    );
    assert.deepEqual(seen, ['a']);
  });

  it('shards: each shard gets index % N == i, reports only its own bad lines, and together they cover every prompt', async () => {
    const lines = Array.from({ length: 10 }, (_, i) => (i === 4 ? '{"prompt": 4}' : JSON.stringify({ prompt: `p${i}` })));
    const path = await file('shard.jsonl', '# comment\n' + lines.join('\n\n'));
    const all: number[] = [];
    for (let i = 0; i < 3; i++) {
      const { records, issues } = await readAll(path, { shard: { index: i, count: 3 } });
      for (const r of records) assert.equal(r.index % 3, i);
      for (const r of records) assert.equal(r.prompt, `p${r.index}`);
      assert.deepEqual(issues.length, i === 1 ? 1 : 0);
      all.push(...records.map((r) => r.index));
      assert.equal(await countPrompts(path, { shard: { index: i, count: 3 } }), [4, 3, 3][i]);
    }
    assert.deepEqual(all.sort((a, b) => a - b), [0, 1, 2, 3, 5, 6, 7, 8, 9]);
  });

  it('reads a stream source and stdin (through a child process)', async () => {
    const fromStream = await readAll(Readable.from([Buffer.from('one\ntw'), Buffer.from('o\n')]), { label: 'in' });
    assert.deepEqual(fromStream.records.map((r) => r.prompt), ['one', 'two']);

    const script = join(dir, 'read-stdin.mts');
    const modulePath = resolve('src/io/prompts.ts');
    await writeFile(
      script,
      `import { readPrompts } from ${JSON.stringify(modulePath)};\n` +
        `for await (const r of readPrompts('-', { onIssue: (i) => console.log('issue', i.line) })) console.log(r.index, String(r.seed ?? '-'), r.prompt);\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stdin.write('{"prompt": "first", "seed": "12345678901234567890"}\n');
    child.stdin.write('{"prompt": 1}\n{"prompt": "third"}\n');
    child.stdin.end();
    const code = await new Promise((res) => child.on('close', res));
    assert.equal(code, 0);
    assert.equal(out, '0 12345678901234567890 first\nissue 2\n2 - third\n');
    await assert.rejects(countPrompts('-'), /stdin/);
  });

  it('names a missing file clearly', async () => {
    await assert.rejects(readAll(join(dir, 'nope.txt')), (err: unknown) => err instanceof BadInputError && /no such prompt file/.test(err.message));
    await assert.rejects(countPrompts(join(dir, 'nope.txt')), BadInputError);
  });

  it('streams: the first record arrives long before a 200k-line file is read, and the count matches', async function () {
    const lines: string[] = [];
    for (let i = 0; i < 200_000; i++) lines.push(JSON.stringify({ prompt: `prompt number ${i} of a long file`, seed: i * 3 }));
    const path = await file('big.jsonl', lines.join('\n') + '\n');
    const size = (await stat(path)).size;

    const stream = createReadStream(path, { highWaterMark: 64 * 1024 });
    const gen = readPrompts(stream, { label: path });
    const first = await gen.next();
    assert.equal(first.done, false);
    assert.equal((first.value as PromptRecord).prompt, 'prompt number 0 of a long file');
    assert.ok(stream.bytesRead < size / 10, `read ${stream.bytesRead} of ${size} bytes before the first record`);
    assert.equal(stream.readableEnded, false);
    await gen.return(undefined as never);
    assert.equal(stream.destroyed, true, 'stopping early closes the file');

    let n = 0;
    let seedSum = 0n;
    for await (const r of readPrompts(path, {})) {
      n++;
      seedSum += r.seed!;
    }
    assert.equal(n, 200_000);
    assert.equal(seedSum, 3n * ((199_999n * 200_000n) / 2n));
    assert.equal(await countPrompts(path), 200_000);
  });
});
