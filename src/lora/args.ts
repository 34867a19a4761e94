/** Command-line LoRA arguments: `file` or `file:scale`. */
import { OnestepError } from '../errors.js';
import type { LoraSpec } from './merge.js';

/**
 * `path`, `path:0.7`, `C:\loras\x.safetensors:-0.5`, `a:b.safetensors`: only a trailing `:<number>` is a scale
 * (a path may itself contain ':'); without one the scale is 1.
 */
export function parseLoraArg(arg: string): LoraSpec {
  const m = /^(.+):([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$/.exec(arg);
  const notFinite = /^(.+):[+-]?(?:nan|inf|infinity)$/i.exec(arg);
  if ((m && !Number.isFinite(Number(m[2]))) || notFinite) {
    throw new OnestepError(`"${arg}": the LoRA scale must be a finite number`, 'Pass a scale such as style.safetensors:0.7 (a NaN or Inf scale would merge NaN/Inf weights).');
  }
  if (m) return { path: m[1], scale: Number(m[2]) };
  if (arg.length === 0 || /^:/.test(arg)) {
    throw new OnestepError(`"${arg}" names no LoRA file`, 'Pass LoRA files as <file> or <file>:<scale>, e.g. style.safetensors:0.7.');
  }
  return { path: arg, scale: 1 };
}
