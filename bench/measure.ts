/** Shared by the benchmarks: timing a child process with its peak RSS, and timing shell commands (cp). */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const TIME = '/usr/bin/time';

/** Runs a command, timing it; the peak RSS of the child comes from GNU time -v, else from a preload in node itself. */
export async function measure(args: string[]): Promise<{ seconds: number; peakRssMB: number; source: string; stderr: string }> {
  const useTime = existsSync(TIME);
  const rssFile = join(ROOT, 'bench', '.work', `rss-${process.pid}.txt`);
  // Fallback: the child reports its own maxRSS at exit (covers the whole node process, which is the converter).
  const preload = `data:text/javascript,${encodeURIComponent(
    `import { writeFileSync } from 'node:fs'; process.on('exit', () => writeFileSync(${JSON.stringify(rssFile)}, String(process.resourceUsage().maxRSS)));`,
  )}`;
  const [cmd, cmdArgs] = useTime ? [TIME, ['-v', process.execPath, ...args]] : [process.execPath, ['--import', preload, ...args]];
  const started = performance.now();
  const child = spawn(cmd, cmdArgs, { cwd: ROOT, stdio: ['ignore', 'inherit', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code: number = await new Promise((res) => child.on('close', res));
  const seconds = (performance.now() - started) / 1000;
  if (code !== 0) throw new Error(`${cmd} ${cmdArgs.join(' ')} exited ${code}:\n${stderr}`);
  if (useTime) {
    const kb = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
    if (!kb) throw new Error(`no RSS in GNU time output:\n${stderr}`);
    return { seconds, peakRssMB: Number(kb[1]) / 1024, source: '/usr/bin/time -v', stderr };
  }
  const kb = Number(await readFile(rssFile, 'utf8'));
  await rm(rssFile, { force: true });
  return { seconds, peakRssMB: kb / 1024, source: 'process.resourceUsage() in the child', stderr };
}

export function timeShell(script: string, ...args: string[]): number {
  const started = performance.now();
  execFileSync('sh', ['-c', script, 'sh', ...args], { stdio: 'inherit' });
  return (performance.now() - started) / 1000;
}

/** Bytes of every file under `dir`. */
export async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  }
  return total;
}

/** A deterministic N(0,1)-ish fill (sum of uniforms) for the inference inputs. */
export function randn(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const u = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
  return Float32Array.from({ length: n }, () => (u() + u() + u() + u() - 2) * Math.sqrt(3));
}
