/**
 * Name maps between the original single-file layouts (CompVis/LDM UNet and VAE, transformers CLIP inside LDM,
 * OpenCLIP for SD 2.x) and canonical diffusers / transformers names. Rule-based: each rule rewrites a path prefix,
 * so the same functions serve full tensor keys (`...conv1.weight`) and module paths (`...conv1`, used by LoRA keys).
 * Facts follow diffusers' convert_from_ckpt.py / convert_diffusers_to_original_stable_diffusion.py.
 */

/** How one canonical tensor is read from the single file. */
export interface SourceRef {
  /** The tensor's name in the file. */
  key: string;
  /** Take rows [start, end) of dimension 0 (OpenCLIP's packed q/k/v `in_proj_*`). */
  rows?: [number, number];
  /** 2-D transpose (OpenCLIP `text_projection` is stored as x @ P, transformers' Linear as P^T). */
  transpose?: boolean;
  /** Drop trailing 1x1 dims: a 1x1 conv [C,C,1,1] presented as a linear [C,C] (LDM VAE attention). */
  squeeze?: boolean;
}

export const UNET_PREFIX = 'model.diffusion_model.';
export const VAE_PREFIX = 'first_stage_model.';
export const CLIP_PREFIX = 'cond_stage_model.transformer.';
export const OPENCLIP_PREFIX = 'cond_stage_model.model.';
/** SDXL (SGM / A1111): CLIP ViT-L in transformers names and OpenCLIP bigG in OpenCLIP names. */
export const SGM_CLIP_PREFIX = 'conditioner.embedders.0.transformer.';
export const SGM_OPENCLIP_PREFIX = 'conditioner.embedders.1.model.';

function join(prefix: string, rest: string): string {
  return rest ? `${prefix}.${rest}` : prefix;
}

/** Rewrites the leading path segments of `rest` by the first matching pair; undefined when none matches. */
function renameLeading(rest: string, table: ReadonlyArray<readonly [string, string]>): string | undefined {
  for (const [from, to] of table) {
    if (rest === from) return to;
    if (rest.startsWith(from + '.')) return to + rest.slice(from.length);
  }
  return undefined;
}

const LDM_RESNET: ReadonlyArray<readonly [string, string]> = [
  ['in_layers.0', 'norm1'],
  ['in_layers.2', 'conv1'],
  ['out_layers.0', 'norm2'],
  ['out_layers.3', 'conv2'],
  ['emb_layers.1', 'time_emb_proj'],
  ['skip_connection', 'conv_shortcut'],
];
const CANONICAL_RESNET = LDM_RESNET.map(([a, b]) => [b, a] as const);

const LDM_UNET_TOP: ReadonlyArray<readonly [string, string]> = [
  ['time_embed.0', 'time_embedding.linear_1'],
  ['time_embed.2', 'time_embedding.linear_2'],
  ['input_blocks.0.0', 'conv_in'],
  ['label_emb.0.0', 'add_embedding.linear_1'],
  ['label_emb.0.2', 'add_embedding.linear_2'],
  ['out.0', 'conv_norm_out'],
  ['out.2', 'conv_out'],
];
const CANONICAL_UNET_TOP = LDM_UNET_TOP.map(([a, b]) => [b, a] as const);

function resnetRest(rest: string | undefined, table: ReadonlyArray<readonly [string, string]>): string | undefined {
  if (rest === undefined || rest === '') return '';
  return renameLeading(rest, table);
}

function withRest(prefix: string, rest: string | undefined): string | undefined {
  return rest === undefined ? undefined : join(prefix, rest);
}

/**
 * LDM UNet key or module path (relative to `model.diffusion_model.`, or with that prefix) -> diffusers
 * UNet2DConditionModel key (without `unet.`). `layersPerBlock` is 2 for SD 1.x / 2.x.
 * Example: `input_blocks.4.1.proj_in` -> `down_blocks.1.attentions.0.proj_in`.
 */
export function ldmUnetKeyToCanonical(key: string, layersPerBlock = 2): string | undefined {
  if (key.startsWith(UNET_PREFIX)) key = key.slice(UNET_PREFIX.length);
  const top = renameLeading(key, LDM_UNET_TOP);
  if (top !== undefined) return top;
  const per = layersPerBlock + 1;
  let m = /^input_blocks\.(\d+)\.(\d+)(?:\.(.*))?$/.exec(key);
  if (m) {
    const i = Number(m[1]);
    const part = Number(m[2]);
    const rest = m[3] ?? '';
    if (i === 0) return undefined;
    const block = Math.floor((i - 1) / per);
    const layer = (i - 1) % per;
    if (layer === layersPerBlock) {
      if (part !== 0) return undefined;
      const op = renameLeading(rest, [['op', 'conv']]);
      return withRest(`down_blocks.${block}.downsamplers.0`, op);
    }
    if (part === 0) return withRest(`down_blocks.${block}.resnets.${layer}`, resnetRest(rest, LDM_RESNET));
    if (part === 1) return join(`down_blocks.${block}.attentions.${layer}`, rest);
    return undefined;
  }
  m = /^middle_block\.(\d)(?:\.(.*))?$/.exec(key);
  if (m) {
    const rest = m[2] ?? '';
    if (m[1] === '0') return withRest('mid_block.resnets.0', resnetRest(rest, LDM_RESNET));
    if (m[1] === '1') return join('mid_block.attentions.0', rest);
    if (m[1] === '2') return withRest('mid_block.resnets.1', resnetRest(rest, LDM_RESNET));
    return undefined;
  }
  m = /^output_blocks\.(\d+)\.(\d+)(?:\.(.*))?$/.exec(key);
  if (m) {
    const i = Number(m[1]);
    const part = Number(m[2]);
    const rest = m[3] ?? '';
    const block = Math.floor(i / per);
    const layer = i % per;
    if (part === 0) return withRest(`up_blocks.${block}.resnets.${layer}`, resnetRest(rest, LDM_RESNET));
    // The upsampler sits after the resnet (blocks without attention) or after the attention.
    const up = renameLeading(rest, [['conv', 'conv']]);
    if (up !== undefined) return layer === layersPerBlock ? join(`up_blocks.${block}.upsamplers.0`, up) : undefined;
    if (part === 1) return join(`up_blocks.${block}.attentions.${layer}`, rest);
    return undefined;
  }
  return undefined;
}

/** LDM-style UNet module path (as kohya LoRA keys may use) -> canonical module path; alias of ldmUnetKeyToCanonical. */
export function ldmUnetModuleToCanonical(modulePath: string, layersPerBlock = 2): string | undefined {
  return ldmUnetKeyToCanonical(modulePath, layersPerBlock);
}

/** What the inverse UNet map needs to know about the network. */
export interface UnetLdmLayout {
  layersPerBlock: number;
  /** Whether up block b has attentions (decides whether its upsampler is `output_blocks.N.1` or `.2`). */
  upBlockHasAttention: (block: number) => boolean;
}

/** SD 1.x / 2.x: 2 layers per block; up block 0 has no attention. */
export const SD_UNET_LAYOUT: UnetLdmLayout = { layersPerBlock: 2, upBlockHasAttention: (b) => b > 0 };

/** Canonical UNet key (without `unet.`) -> LDM key (without `model.diffusion_model.`). */
export function canonicalUnetToLdm(key: string, layout: UnetLdmLayout = SD_UNET_LAYOUT): string | undefined {
  const top = renameLeading(key, CANONICAL_UNET_TOP);
  if (top !== undefined) return top;
  const L = layout.layersPerBlock;
  const per = L + 1;
  let m = /^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.*))?$/.exec(key);
  if (m) {
    const i = Number(m[1]) * per + Number(m[3]) + 1;
    if (m[2] === 'resnets') return withRest(`input_blocks.${i}.0`, resnetRest(m[4], CANONICAL_RESNET));
    return join(`input_blocks.${i}.1`, m[4] ?? '');
  }
  m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv(?:\.(.*))?$/.exec(key);
  if (m) return join(`input_blocks.${Number(m[1]) * per + L + 1}.0.op`, m[2] ?? '');
  m = /^mid_block\.(resnets|attentions)\.(\d)(?:\.(.*))?$/.exec(key);
  if (m) {
    if (m[1] === 'attentions') return m[2] === '0' ? join('middle_block.1', m[3] ?? '') : undefined;
    if (m[2] !== '0' && m[2] !== '1') return undefined;
    return withRest(`middle_block.${m[2] === '0' ? 0 : 2}`, resnetRest(m[3], CANONICAL_RESNET));
  }
  m = /^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.*))?$/.exec(key);
  if (m) {
    const i = Number(m[1]) * per + Number(m[3]);
    if (m[2] === 'resnets') return withRest(`output_blocks.${i}.0`, resnetRest(m[4], CANONICAL_RESNET));
    return join(`output_blocks.${i}.1`, m[4] ?? '');
  }
  m = /^up_blocks\.(\d+)\.upsamplers\.0\.conv(?:\.(.*))?$/.exec(key);
  if (m) {
    const b = Number(m[1]);
    return join(`output_blocks.${b * per + L}.${layout.upBlockHasAttention(b) ? 2 : 1}.conv`, m[2] ?? '');
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// VAE

const VAE_RESNET: ReadonlyArray<readonly [string, string]> = [
  ['norm1', 'norm1'],
  ['conv1', 'conv1'],
  ['norm2', 'norm2'],
  ['conv2', 'conv2'],
  ['nin_shortcut', 'conv_shortcut'],
];
const VAE_RESNET_INV = VAE_RESNET.map(([a, b]) => [b, a] as const);
const VAE_ATTN: ReadonlyArray<readonly [string, string]> = [
  ['norm', 'group_norm'],
  ['q', 'to_q'],
  ['k', 'to_k'],
  ['v', 'to_v'],
  ['proj_out', 'to_out.0'],
];
const VAE_ATTN_INV = VAE_ATTN.map(([a, b]) => [b, a] as const);

export interface CanonicalTarget {
  name: string;
  /** The stored tensor may be a 1x1 conv standing for a linear layer. */
  squeeze?: boolean;
}

/**
 * LDM VAE key (relative to `first_stage_model.`) -> diffusers AutoencoderKL key (without `vae.`).
 * `levels` is the number of resolution levels (4 for SD); the decoder's `up.i` is diffusers' `up_blocks.(levels-1-i)`.
 */
export function ldmVaeKeyToCanonical(key: string, levels: number): CanonicalTarget | undefined {
  if (key.startsWith(VAE_PREFIX)) key = key.slice(VAE_PREFIX.length);
  let m = /^(quant_conv|post_quant_conv)(\..*)?$/.exec(key);
  if (m) return { name: key };
  m = /^(encoder|decoder)\.(conv_in|conv_out|norm_out)(?:\.(.*))?$/.exec(key);
  if (m) return { name: join(`${m[1]}.${m[2] === 'norm_out' ? 'conv_norm_out' : m[2]}`, m[3] ?? '') };
  m = /^(encoder\.down|decoder\.up)\.(\d+)\.block\.(\d+)(?:\.(.*))?$/.exec(key);
  if (m) {
    const rest = resnetRest(m[4], VAE_RESNET);
    if (rest === undefined) return undefined;
    const enc = m[1] === 'encoder.down';
    const block = enc ? Number(m[2]) : levels - 1 - Number(m[2]);
    return { name: join(`${enc ? 'encoder.down_blocks' : 'decoder.up_blocks'}.${block}.resnets.${m[3]}`, rest) };
  }
  m = /^encoder\.down\.(\d+)\.downsample\.conv(?:\.(.*))?$/.exec(key);
  if (m) return { name: join(`encoder.down_blocks.${m[1]}.downsamplers.0.conv`, m[2] ?? '') };
  m = /^decoder\.up\.(\d+)\.upsample\.conv(?:\.(.*))?$/.exec(key);
  if (m) return { name: join(`decoder.up_blocks.${levels - 1 - Number(m[1])}.upsamplers.0.conv`, m[2] ?? '') };
  m = /^(encoder|decoder)\.mid\.block_([12])(?:\.(.*))?$/.exec(key);
  if (m) {
    const rest = resnetRest(m[3], VAE_RESNET);
    return rest === undefined ? undefined : { name: join(`${m[1]}.mid_block.resnets.${Number(m[2]) - 1}`, rest) };
  }
  m = /^(encoder|decoder)\.mid\.attn_1\.(.*)$/.exec(key);
  if (m) {
    const rest = renameLeading(m[2], VAE_ATTN);
    if (rest === undefined) return undefined;
    const isProjection = !rest.startsWith('group_norm');
    return { name: `${m[1]}.mid_block.attentions.0.${rest}`, squeeze: isProjection && rest.endsWith('.weight') };
  }
  return undefined;
}

/** Canonical VAE key (without `vae.`) -> LDM key (without `first_stage_model.`). */
export function canonicalVaeToLdm(key: string, levels = 4): string | undefined {
  let m = /^(quant_conv|post_quant_conv)(\..*)?$/.exec(key);
  if (m) return key;
  m = /^(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)(?:\.(.*))?$/.exec(key);
  if (m) return join(`${m[1]}.${m[2] === 'conv_norm_out' ? 'norm_out' : m[2]}`, m[3] ?? '');
  m = /^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.resnets\.(\d+)(?:\.(.*))?$/.exec(key);
  if (m) {
    const enc = m[1] === 'encoder.down_blocks';
    const i = enc ? Number(m[2]) : levels - 1 - Number(m[2]);
    return withRest(`${enc ? 'encoder.down' : 'decoder.up'}.${i}.block.${m[3]}`, resnetRest(m[4], VAE_RESNET_INV));
  }
  m = /^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv(?:\.(.*))?$/.exec(key);
  if (m) return join(`encoder.down.${m[1]}.downsample.conv`, m[2] ?? '');
  m = /^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv(?:\.(.*))?$/.exec(key);
  if (m) return join(`decoder.up.${levels - 1 - Number(m[1])}.upsample.conv`, m[2] ?? '');
  m = /^(encoder|decoder)\.mid_block\.resnets\.([01])(?:\.(.*))?$/.exec(key);
  if (m) return withRest(`${m[1]}.mid.block_${Number(m[2]) + 1}`, resnetRest(m[3], VAE_RESNET_INV));
  m = /^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)$/.exec(key);
  if (m) return withRest(`${m[1]}.mid.attn_1`, renameLeading(m[2], VAE_ATTN_INV));
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Text encoders

/**
 * transformers CLIP inside an LDM file (relative to `cond_stage_model.transformer.`) -> CLIPTextModel key.
 * Accepts `text_model.*` and the older layout without `text_model.`.
 */
export function ldmClipKeyToCanonical(key: string): string | undefined {
  if (key.startsWith(CLIP_PREFIX)) key = key.slice(CLIP_PREFIX.length);
  if (key.startsWith('text_model.')) key = key.slice('text_model.'.length);
  if (/^(embeddings|encoder|final_layer_norm)(\.|$)/.test(key)) return `text_model.${key}`;
  return undefined;
}

const OPENCLIP_BLOCK: ReadonlyArray<readonly [string, string]> = [
  ['ln_1', 'layer_norm1'],
  ['ln_2', 'layer_norm2'],
  ['attn.out_proj', 'self_attn.out_proj'],
  ['mlp.c_fc', 'mlp.fc1'],
  ['mlp.c_proj', 'mlp.fc2'],
];

export interface OpenClipTarget {
  name: string;
  rows?: [number, number];
  transpose?: boolean;
}

/**
 * OpenCLIP text tower key (relative to `cond_stage_model.model.`) -> CLIPTextModel keys (several for the packed
 * `in_proj_*`, split into q/k/v by rows of `width` each); undefined for unknown keys. Every block maps: which
 * layer a model conditions on is the text encoder's output choice (architectures/clip-text.ts), not the map's.
 */
export function openClipKeyToCanonical(key: string, width: number): OpenClipTarget[] | undefined {
  if (key.startsWith(OPENCLIP_PREFIX)) key = key.slice(OPENCLIP_PREFIX.length);
  if (key === 'token_embedding.weight') return [{ name: 'text_model.embeddings.token_embedding.weight' }];
  if (key === 'positional_embedding') return [{ name: 'text_model.embeddings.position_embedding.weight' }];
  if (key === 'text_projection') return [{ name: 'text_projection.weight', transpose: true }];
  let m = /^ln_final\.(weight|bias)$/.exec(key);
  if (m) return [{ name: `text_model.final_layer_norm.${m[1]}` }];
  m = /^transformer\.resblocks\.(\d+)\.(.*)$/.exec(key);
  if (!m) return undefined;
  const layer = `text_model.encoder.layers.${m[1]}`;
  const packed = /^attn\.in_proj_(weight|bias)$/.exec(m[2]);
  let targets: OpenClipTarget[] | undefined;
  if (packed) {
    targets = (['q', 'k', 'v'] as const).map((p, i) => ({
      name: `${layer}.self_attn.${p}_proj.${packed[1]}`,
      rows: [i * width, (i + 1) * width] as [number, number],
    }));
  } else {
    const rest = renameLeading(m[2], OPENCLIP_BLOCK);
    targets = rest === undefined ? undefined : [{ name: `${layer}.${rest}` }];
  }
  return targets;
}

/**
 * Text-encoder module path written in LDM style (`cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1`,
 * the same without `text_model.`, or OpenCLIP `cond_stage_model.model.transformer.resblocks.0.mlp.c_fc`, with or
 * without `cond_stage_model.`) -> CLIPTextModel module path. OpenCLIP's packed in_proj has no single module: undefined.
 */
export function ldmTextModuleToCanonical(modulePath: string): string | undefined {
  let p = modulePath.startsWith('cond_stage_model.') ? modulePath.slice('cond_stage_model.'.length) : modulePath;
  if (p.startsWith('transformer.text_model.') || /^transformer\.(embeddings|encoder|final_layer_norm)\b/.test(p)) {
    return ldmClipKeyToCanonical(p.slice('transformer.'.length));
  }
  if (p.startsWith('model.')) p = p.slice('model.'.length);
  if (p === 'ln_final') return 'text_model.final_layer_norm';
  if (p === 'token_embedding') return 'text_model.embeddings.token_embedding';
  const m = /^transformer\.resblocks\.(\d+)\.(.*)$/.exec(p);
  if (m) {
    const rest = renameLeading(m[2], OPENCLIP_BLOCK);
    return rest === undefined ? undefined : `text_model.encoder.layers.${m[1]}.${rest}`;
  }
  if (/^text_model\./.test(p)) return p;
  return undefined;
}

/** Which text encoder layout a single file uses: SD 1.x CLIP, SD 2.x OpenCLIP, SDXL's two (SGM conditioner). */
export type TextLayout = 'clip' | 'openclip' | 'sgm';

export interface LdmLayout {
  unet: UnetLdmLayout;
  vaeLevels: number;
  text: TextLayout;
}

export const SD1_LDM_LAYOUT: LdmLayout = { unet: SD_UNET_LAYOUT, vaeLevels: 4, text: 'clip' };

/**
 * Canonical name (`unet.*`, `vae.*`, `text_encoder.*`) -> the original single-file key. For OpenCLIP q/k/v
 * projections this is the packed `in_proj_*` key (rows [0,C), [C,2C), [2C,3C) hold q, k, v).
 */
export function canonicalToLdm(name: string, layout: LdmLayout = SD1_LDM_LAYOUT): string | undefined {
  if (name.startsWith('unet.')) {
    const k = canonicalUnetToLdm(name.slice(5), layout.unet);
    return k === undefined ? undefined : UNET_PREFIX + k;
  }
  if (name.startsWith('vae.')) {
    const k = canonicalVaeToLdm(name.slice(4), layout.vaeLevels);
    return k === undefined ? undefined : VAE_PREFIX + k;
  }
  if (layout.text === 'sgm') {
    if (name.startsWith('text_encoder.text_model.')) return SGM_CLIP_PREFIX + name.slice('text_encoder.'.length);
    if (name.startsWith('text_encoder_2.')) return canonicalToOpenClip(name.slice('text_encoder_2.'.length), SGM_OPENCLIP_PREFIX);
    return undefined;
  }
  if (!name.startsWith('text_encoder.')) return undefined;
  const key = name.slice('text_encoder.'.length);
  if (layout.text === 'clip') return key.startsWith('text_model.') ? CLIP_PREFIX + key : undefined;
  return canonicalToOpenClip(key, OPENCLIP_PREFIX);
}

function canonicalToOpenClip(key: string, prefix: string): string | undefined {
  const fixed: Record<string, string> = {
    'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
    'text_model.embeddings.position_embedding.weight': 'positional_embedding',
    'text_model.final_layer_norm.weight': 'ln_final.weight',
    'text_model.final_layer_norm.bias': 'ln_final.bias',
    'text_projection.weight': 'text_projection',
  };
  if (fixed[key]) return prefix + fixed[key];
  const m = /^text_model\.encoder\.layers\.(\d+)\.(.*)$/.exec(key);
  if (!m) return undefined;
  const block = `${prefix}transformer.resblocks.${m[1]}`;
  const qkv = /^self_attn\.[qkv]_proj\.(weight|bias)$/.exec(m[2]);
  if (qkv) return `${block}.attn.in_proj_${qkv[1]}`;
  const rest = renameLeading(
    m[2],
    OPENCLIP_BLOCK.map(([a, b]) => [b, a] as const),
  );
  return rest === undefined ? undefined : `${block}.${rest}`;
}

// ---------------------------------------------------------------------------------------------------------------
// A whole single file

/** Buffers of the LDM DDPM wrapper that real checkpoints carry and nothing reads. */
const DDPM_BUFFERS = new Set([
  'betas',
  'alphas_cumprod',
  'alphas_cumprod_prev',
  'sqrt_alphas_cumprod',
  'sqrt_one_minus_alphas_cumprod',
  'log_one_minus_alphas_cumprod',
  'sqrt_recip_alphas_cumprod',
  'sqrt_recipm1_alphas_cumprod',
  'posterior_variance',
  'posterior_log_variance_clipped',
  'posterior_mean_coef1',
  'posterior_mean_coef2',
  'logvar',
  'lvlb_weights',
  'model_ema.decay',
  'model_ema.num_updates',
]);

/** Keys present in ordinary checkpoints that map to nothing and are not worth reporting. */
export function isKnownIgnorableKey(key: string): boolean {
  return (
    DDPM_BUFFERS.has(key) ||
    key.endsWith('.position_ids') ||
    key === OPENCLIP_PREFIX + 'logit_scale' ||
    key === OPENCLIP_PREFIX + 'attn_mask' ||
    key === SGM_OPENCLIP_PREFIX + 'logit_scale' ||
    key === SGM_OPENCLIP_PREFIX + 'attn_mask' ||
    key === 'denoiser.sigmas' ||
    key.startsWith(VAE_PREFIX + 'loss.')
  );
}

/** `model.diffusion_model.a.b` -> `model_ema.diffusion_modelab` (LitEma stores names with the dots removed). */
export function emaKeyFor(unetKey: string): string {
  return 'model_ema.' + unetKey.split('.').slice(1).join('');
}

export interface LdmKeyMap {
  /** Canonical name -> where it is in the file. */
  entries: Map<string, SourceRef>;
  /** Keys that map to nothing we use (known-ignorable and known-unused keys excluded). */
  unmapped: string[];
  notes: string[];
  layout: LdmLayout;
  /**
   * SD 2.x (OpenCLIP) files: the hidden state SD 2.x conditions on, as transformers indexes hidden_states (-2: the
   * penultimate layer of the whole tower the file holds; -1: the file holds only the used blocks).
   */
  textLayer?: number;
}

function distinctIndices(keys: string[], re: RegExp): number[] {
  const s = new Set<number>();
  for (const k of keys) {
    const m = re.exec(k);
    if (m) s.add(Number(m[1]));
  }
  return [...s].sort((a, b) => a - b);
}

/**
 * How many OpenCLIP blocks SD 2.x uses. Original checkpoints hold the whole tower (ViT-H: 24 blocks) and SD 2.x
 * conditions on the penultimate layer, so the last block goes unused; files written back from diffusers by
 * convert_diffusers_to_original_stable_diffusion.py hold only the 23 used blocks of ViT-H (width 1024).
 */
export function openClipUsedBlocks(blocks: number, width: number): number {
  return blocks === 23 && width === 1024 ? 23 : Math.max(0, blocks - 1);
}

/**
 * Maps every key of an SD 1.x / 2.x / SDXL single file to canonical names. `shapeOf` gives a key's stored shape.
 * `textBlocksUsed` overrides openClipUsedBlocks() (SD 2.x OpenCLIP files only).
 */
export function buildLdmKeyMap(
  keys: string[],
  shapeOf: (key: string) => number[],
  text: TextLayout,
  textBlocksUsed?: number,
): LdmKeyMap {
  const entries = new Map<string, SourceRef>();
  const unmapped: string[] = [];
  const notes: string[] = [];
  const keySet = new Set(keys);

  const inputBlocks = distinctIndices(keys, /^model\.diffusion_model\.input_blocks\.(\d+)\./);
  const opBlocks = distinctIndices(keys, /^model\.diffusion_model\.input_blocks\.(\d+)\.0\.op\./);
  const layersPerBlock = opBlocks.length > 0 ? opBlocks[0] - 1 : Math.max(0, ...inputBlocks);
  const vaeLevels = Math.max(
    distinctIndices(keys, /^first_stage_model\.decoder\.up\.(\d+)\./).length,
    distinctIndices(keys, /^first_stage_model\.encoder\.down\.(\d+)\./).length,
  );
  const openClipPrefix = text === 'sgm' ? SGM_OPENCLIP_PREFIX : OPENCLIP_PREFIX;
  const clipPrefix = text === 'sgm' ? SGM_CLIP_PREFIX : CLIP_PREFIX;
  const textBlocks = distinctIndices(
    keys.filter((k) => k.startsWith(openClipPrefix)).map((k) => k.slice(openClipPrefix.length)),
    /^transformer\.resblocks\.(\d+)\./,
  ).length;
  const textWidth = keySet.has(openClipPrefix + 'token_embedding.weight') ? shapeOf(openClipPrefix + 'token_embedding.weight')[1] : 0;
  const usedBlocks = Math.min(textBlocks, textBlocksUsed ?? openClipUsedBlocks(textBlocks, textWidth));
  const openClipComponent = text === 'sgm' ? 'text_encoder_2' : 'text_encoder';

  const unetKeys = keys.filter((k) => k.startsWith(UNET_PREFIX));
  const emaKeys = keys.filter((k) => k.startsWith('model_ema.') && !DDPM_BUFFERS.has(k));
  const useEma = unetKeys.length > 0 && emaKeys.length > 0 && unetKeys.every((k) => keySet.has(emaKeyFor(k)));
  if (useEma) notes.push('EMA weights present and used (model_ema.*)');
  else if (emaKeys.length > 0) notes.push('EMA weights present but incomplete: the plain UNet weights are used');
  const emaUsed = new Set(useEma ? unetKeys.map(emaKeyFor) : []);

  for (const key of keys) {
    if (isKnownIgnorableKey(key)) continue;
    if (key.startsWith(UNET_PREFIX)) {
      const name = ldmUnetKeyToCanonical(key.slice(UNET_PREFIX.length), layersPerBlock);
      if (name === undefined) unmapped.push(key);
      else entries.set(`unet.${name}`, { key: useEma ? emaKeyFor(key) : key });
    } else if (key.startsWith('model_ema.')) {
      if (useEma && !emaUsed.has(key)) unmapped.push(key);
    } else if (key.startsWith(VAE_PREFIX)) {
      const t = ldmVaeKeyToCanonical(key.slice(VAE_PREFIX.length), vaeLevels);
      if (t === undefined) unmapped.push(key);
      else entries.set(`vae.${t.name}`, t.squeeze && shapeOf(key).length === 4 ? { key, squeeze: true } : { key });
    } else if (text !== 'openclip' && key.startsWith(clipPrefix)) {
      const name = ldmClipKeyToCanonical(key.slice(clipPrefix.length));
      if (name === undefined) unmapped.push(key);
      else entries.set(`text_encoder.${name}`, { key });
    } else if (text !== 'clip' && key.startsWith(openClipPrefix)) {
      const targets = openClipKeyToCanonical(key.slice(openClipPrefix.length), textWidth);
      if (targets === undefined) unmapped.push(key);
      for (const t of targets ?? []) entries.set(`${openClipComponent}.${t.name}`, { key, rows: t.rows, transpose: t.transpose });
    } else {
      unmapped.push(key);
    }
  }
  if (text === 'openclip' && textBlocks > 0) {
    notes.push(
      usedBlocks < textBlocks
        ? `SD 2.x text encoder: penultimate layer used (${usedBlocks} of ${textBlocks} OpenCLIP blocks)`
        : `SD 2.x text encoder: all ${textBlocks} OpenCLIP blocks used (the file holds only the used ones)`,
    );
  }
  const upWithAttention = new Set(
    [...entries.keys()].flatMap((n) => {
      const m = /^unet\.up_blocks\.(\d+)\.attentions\./.exec(n);
      return m ? [Number(m[1])] : [];
    }),
  );
  const layout: LdmLayout = {
    unet: { layersPerBlock, upBlockHasAttention: (b) => upWithAttention.has(b) },
    vaeLevels,
    text,
  };
  const textLayer = text === 'openclip' && textBlocks > 0 ? usedBlocks - textBlocks - 1 : undefined;
  return { entries, unmapped, notes, layout, textLayer };
}
