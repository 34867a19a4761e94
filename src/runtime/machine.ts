/**
 * What the machine is, for benchmarks (every figure names its CPU) and for cache keys (ORT's optimized graphs and
 * prepacked weights are laid out for the CPU's vector width: an AVX-512 machine's cache is wrong on an AVX2 one).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

export interface CpuInfo {
  model: string;
  /** Logical cores available to this process. */
  cores: number;
  /** The vector and matrix extensions that change ORT's kernels: avx2, avx512f, avx512_bf16, avx512_vnni, amx_*. */
  isa: string[];
  /** All feature flags (Linux /proc/cpuinfo), for cache keys. */
  flags: string[];
}

const ISA_FLAGS = ['sse4_2', 'avx', 'fma', 'f16c', 'avx2', 'avx_vnni', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16', 'amx_tile', 'amx_bf16', 'amx_int8', 'asimd', 'sve'];

let cached: CpuInfo | undefined;

export function cpuInfo(): CpuInfo {
  if (cached) return cached;
  let model = os.cpus()[0]?.model?.trim() || process.arch;
  let flags: string[] = [];
  try {
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    model = /^model name\s*:\s*(.+)$/m.exec(text)?.[1].trim() ?? model;
    flags = (/^(?:flags|Features)\s*:\s*(.+)$/m.exec(text)?.[1] ?? '').trim().split(/\s+/).filter(Boolean).sort();
  } catch {
    // not Linux: the model name from os.cpus() and no flags
  }
  const have = new Set(flags);
  cached = { model, cores: os.availableParallelism(), isa: ISA_FLAGS.filter((f) => have.has(f)), flags };
  return cached;
}

/** The best ISA level ORT's CPU kernels can use here, in one word (amx, avx512, avx2, ...). */
export function isaLevel(cpu: CpuInfo = cpuInfo()): string {
  const has = (f: string) => cpu.isa.includes(f);
  if (has('amx_tile')) return 'amx';
  if (has('avx512f')) return 'avx512';
  if (has('avx2')) return 'avx2';
  if (has('asimd')) return 'neon';
  return cpu.isa.at(-1) ?? process.arch;
}

/** GPU names from nvidia-smi (empty when there is none or it is not installed). */
export function gpuNames(): string[] {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split('\n').map((l) => l.trim()).filter(Boolean);
  } catch {
    return [];
  }
}
