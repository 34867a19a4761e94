import type { Allocator } from '../io/buffers.js';
import type { SafetensorsDType } from '../safetensors/dtypes.js';

/** Elements of a tensor of this shape (1 for a scalar). */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** What a stored tensor is, without reading it. */
export interface TensorMeta {
  shape: number[];
  dtype: SafetensorsDType;
}

/**
 * Weights under canonical (diffusers-style) names such as `unet.conv_in.weight`,
 * `text_encoder.text_model.embeddings.token_embedding.weight`, `vae.decoder.conv_in.weight`.
 * Reads one tensor at a time from disk, so memory stays near the largest tensor.
 * A LoRA merge is a WeightSource decorator that adds scale * delta on read.
 */
export interface WeightSource {
  /** Every canonical name, sorted. */
  names(): string[];
  has(name: string): boolean;
  /** Throws OnestepError naming the tensor when it is absent. */
  meta(name: string): TensorMeta;
  /** The tensor's values as float32 (exact for f16/bf16/f8 storage). */
  readF32(name: string): Promise<Float32Array>;
  /**
   * The tensor's values as float16 bits, exactly f32ToF16(readF32(name)) (a finite value beyond the float16 range
   * becomes +-Infinity, for the caller to refuse), read without a float32 copy where the storage allows: a float16
   * conversion of float16 weights passes their bits through. Optional: without it, callers convert readF32's values.
   * With `alloc`, the result may lie in a buffer from it (the caller's to reuse once done with the values).
   */
  readF16?(name: string, alloc?: Allocator): Promise<Uint16Array>;
  close(): Promise<void>;
}
