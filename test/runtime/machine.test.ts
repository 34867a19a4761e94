import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { cpuInfo, gpuNames, isaLevel } from '../../src/runtime/machine.js';

describe('runtime/machine', () => {
  it('names the CPU and its vector extensions as /proc/cpuinfo does', function () {
    const info = cpuInfo();
    assert.equal(info.cores, os.availableParallelism());
    if (!fs.existsSync('/proc/cpuinfo')) this.skip();
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const model = /^model name\s*:\s*(.+)$/m.exec(text)?.[1].trim();
    if (model) assert.equal(info.model, model);
    const flags = new Set((/^(?:flags|Features)\s*:\s*(.+)$/m.exec(text)?.[1] ?? '').split(/\s+/));
    for (const f of info.isa) assert.ok(flags.has(f), f);
    assert.equal(info.isa.includes('avx2'), flags.has('avx2'));
    assert.equal(info.isa.includes('avx512f'), flags.has('avx512f'));
  });

  it('reduces the flags to one ISA level, the widest first', () => {
    const cpu = (isa: string[]) => ({ model: 'x', cores: 1, isa, flags: isa });
    assert.equal(isaLevel(cpu(['avx2', 'avx512f', 'amx_tile'])), 'amx');
    assert.equal(isaLevel(cpu(['avx2', 'avx512f'])), 'avx512');
    assert.equal(isaLevel(cpu(['avx', 'avx2'])), 'avx2');
    assert.equal(isaLevel(cpu(['asimd'])), 'neon');
  });

  it('lists GPUs through nvidia-smi, or none', () => {
    const gpus = gpuNames();
    assert.ok(Array.isArray(gpus) && gpus.every((g) => typeof g === 'string' && g.length > 0));
  });
});
