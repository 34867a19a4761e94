/**
 * One file of named tensors, whatever its format: safetensors, or a PyTorch pickle read without executing it
 * (src/pytorch/). `openTensorFile` decides by content, so a renamed file is read as what it is.
 */
import { open as openFile, stat, type FileHandle } from 'node:fs/promises';
import { extname } from 'node:path';
import type { Allocator } from '../io/buffers.js';
import { isPickleStream } from '../pytorch/legacy.js';
import { PickleError } from '../pytorch/pickle.js';
import { PyTorchFile } from '../pytorch/tensor-file.js';
import { isZip } from '../pytorch/zip.js';
import { SafetensorsError } from './errors.js';
import { SafetensorsFile, type ByteRange, type TensorInfo } from './reader.js';

export interface TensorFile {
  readonly path: string;
  /** safetensors' __metadata__; empty for pickles. */
  readonly metadata: Readonly<Record<string, string>>;
  /** `byteOffset` is -1 for a tensor that is not one contiguous range of the file (a pickle's strided view). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  info(name: string): TensorInfo;
  /**
   * Row-major little-endian bytes at offset 0 of a fresh buffer, or of one from `alloc` where the format reads in place;
   * with `range`, only those bytes of the tensor's (a row block of a stacked weight).
   */
  readRaw(name: string, alloc?: Allocator, range?: ByteRange): Promise<Uint8Array>;
  /** Values as float32; with `range`, of those bytes only (readRaw's). */
  readF32(name: string, range?: ByteRange): Promise<Float32Array>;
  readF16(name: string): Promise<Uint16Array>;
  /** Where the tensor's bytes lie as stored, for copying without holding them; undefined when not one range. */
  copySource(name: string): { handle: FileHandle; offset: number } | undefined;
  close(): Promise<void>;
}

/** Extensions PyTorch checkpoints use. */
export const PICKLE_EXTENSION = /\.(ckpt|pt|pth|bin)$/i;

export function isPyTorchFile(file: TensorFile): file is PyTorchFile {
  return file instanceof PyTorchFile;
}

/** A .safetensors file, or a torch.save checkpoint (zip or legacy container) under any name. */
export async function openTensorFile(path: string): Promise<TensorFile> {
  const prefix = await sniff(path);
  if (prefix && (isZip(prefix) || isPickleStream(prefix))) return PyTorchFile.open(path);
  if (prefix && PICKLE_EXTENSION.test(path) && !looksLikeSafetensors(prefix)) {
    throw new PickleError(
      path,
      'not-pytorch',
      `is neither a torch.save zip, a legacy torch.save file nor safetensors (its ${extname(path)} name says PyTorch)`,
      'Check that the file is a PyTorch checkpoint and was downloaded completely.',
    );
  }
  if (prefix && PICKLE_EXTENSION.test(path)) return SafetensorsFile.open(path, { anyExtension: true });
  return SafetensorsFile.open(path);
}

/** The first 16 bytes, or undefined when the path is not a readable file (the format reader then says why). */
async function sniff(path: string): Promise<Uint8Array | undefined> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  let handle: FileHandle | undefined;
  try {
    handle = await openFile(path, 'r');
    const buf = new Uint8Array(16);
    const { bytesRead } = await handle.read(buf, 0, 16, 0);
    return buf.subarray(0, bytesRead);
  } catch (e) {
    if (e instanceof SafetensorsError) throw e;
    return undefined;
  } finally {
    await handle?.close();
  }
}

/** An 8-byte little-endian header length followed by '{'. */
function looksLikeSafetensors(prefix: Uint8Array): boolean {
  return prefix.length >= 9 && prefix[8] === 0x7b && prefix[6] === 0 && prefix[7] === 0;
}
