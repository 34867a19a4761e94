/**
 * The network configs a conversion builds from (diffusers / transformers config.json, normalized) are input too: a
 * value that would build a broken graph (0 or non-dividing head counts, a negative or huge sample_size, a VAE
 * scaling_factor of 0 that decodes every image to NaN) is refused before any graph is built, naming the field.
 */
import { BadInputError } from '../errors.js';
import type { CheckpointConfigs } from '../families/types.js';

const HINT = "Fix that value in the component's config.json (diffusers writes these), or convert with --config <a diffusers folder with the right configs>.";

type Json = Record<string, unknown>;

export function checkConfigs(configs: CheckpointConfigs, input: string): void {
  for (const [component, config] of Object.entries(configs)) {
    if (!config || typeof config !== 'object') continue;
    const c = config as Json;
    const fail = (field: string, detail: string): never => {
      throw new BadInputError(`${input} (${component} config)`, `${field} ${detail}`, HINT);
    };
    const positive = (field: string, max = 1 << 20): number | undefined => {
      const v = c[field];
      if (v === undefined || v === null) return undefined;
      if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > max) fail(field, `must be a whole number within 1..${max}, got ${JSON.stringify(v)}`);
      return v as number;
    };
    const positives = (field: string): number[] | undefined => {
      const v = c[field];
      if (v === undefined || v === null) return undefined;
      const list = Array.isArray(v) ? v : [v];
      list.forEach((x, i) => {
        if (!Number.isSafeInteger(x) || (x as number) < 1 || (x as number) > 1 << 20) fail(Array.isArray(v) ? `${field}[${i}]` : field, `must be a whole number >= 1, got ${JSON.stringify(x)}`);
      });
      return list as number[];
    };
    // Latent or pixel side the network was trained at; only a default, but a negative or absurd one is a broken config.
    positive('sample_size', 16384);
    for (const f of ['in_channels', 'out_channels', 'latent_channels', 'layers_per_block', 'cross_attention_dim', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'max_position_embeddings', 'vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_heads', 'num_layers']) positive(f);
    const channels = positives('block_out_channels');
    const groups = positive('norm_num_groups');
    if (channels && groups) channels.forEach((ch, i) => ch % groups && fail(`norm_num_groups ${groups}`, `does not divide block_out_channels[${i}] = ${ch}`));
    if ('scaling_factor' in c) {
      const s = c.scaling_factor;
      if (typeof s !== 'number' || !Number.isFinite(s) || s === 0) fail('scaling_factor', `must be a finite number other than 0 (latents are divided by it), got ${JSON.stringify(s)}`);
    }
    if ('shift_factor' in c && c.shift_factor !== null && !(typeof c.shift_factor === 'number' && Number.isFinite(c.shift_factor))) fail('shift_factor', `must be a finite number or null, got ${JSON.stringify(c.shift_factor)}`);

    // UNet: heads per block (num_attention_heads when set, else attention_head_dim, as SD configs use it) divide the
    // block's channels.
    if (channels && ('attention_head_dim' in c || 'num_attention_heads' in c) && Array.isArray(c.block_out_channels)) {
      const field = c.num_attention_heads != null ? 'num_attention_heads' : 'attention_head_dim';
      const heads = positives(field) ?? [];
      channels.forEach((ch, i) => {
        const h = heads.length === 1 ? heads[0] : heads[i];
        if (h !== undefined && ch % h) fail(`${field}${heads.length > 1 ? `[${i}]` : ''} ${h}`, `does not divide block_out_channels[${i}] = ${ch}`);
      });
    } else if (typeof c.hidden_size === 'number' && 'num_attention_heads' in c) {
      // A text encoder (CLIP): heads divide hidden_size.
      const heads = positive('num_attention_heads', 4096)!;
      if ((c.hidden_size as number) % heads) fail(`num_attention_heads ${heads}`, `does not divide hidden_size ${c.hidden_size}`);
    }
  }
}
