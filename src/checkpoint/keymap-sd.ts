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

// ---------------------------------------------------------------------------------------------------------------
// Path tables: each mapping is stated once, as a pair of paths, and read in either direction.

/** Pairs of leading path segments: [LDM, canonical]. */
type Pairs = ReadonlyArray<readonly [ldm: string, canonical: string]>;
type Side = 'ldm' | 'canonical';
type Indices = Record<string, number>;

/**
 * One module (or tensor) in both namings. `{x}` is an index; in an LDM path, `{x}` may instead name a slot of the
 * table: one number there that packs several canonical indices. What follows the path is kept as it is, or renamed
 * by `rest`; a `tensor` path is a whole name that nothing follows.
 */
interface PathRule {
  ldm: string;
  canonical: string;
  rest?: Pairs;
  tensor?: boolean;
}

/** An LDM number that packs canonical indices: read unpacks it (undefined: not this rule's), write packs them. */
interface Slot<L> {
  read(n: number, layout: L): Indices | undefined;
  write(v: Indices, layout: L): number | undefined;
}

/** Rewrites the leading path segments of `rest` by the first matching pair; undefined when none matches. */
function renameLeading(rest: string, pairs: Pairs, from: Side): string | undefined {
  const [a, b] = from === 'ldm' ? [0, 1] : [1, 0];
  for (const pair of pairs) {
    if (rest === pair[a]) return pair[b];
    if (rest.startsWith(pair[a] + '.')) return pair[b] + rest.slice(pair[a].length);
  }
  return undefined;
}

class PathTable<L> {
  private readonly rules: { rule: PathRule; pattern: Record<Side, RegExp>; names: Record<Side, string[]> }[];

  constructor(
    rules: PathRule[],
    private readonly slots: Record<string, Slot<L>> = {},
  ) {
    this.rules = rules.map((rule) => {
      const compile = (template: string) => {
        const names = [...template.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
        const literal = template.split(/\{[^}]+\}/).map((t) => t.replace(/[.*+?^$()[\]|\\]/g, '\\$&'));
        return { names, re: new RegExp(`^${literal.join('(\\d+)')}${rule.tensor ? '' : '(?:\\.(.+))?'}$`) };
      };
      const ldm = compile(rule.ldm);
      const canonical = compile(rule.canonical);
      return { rule, pattern: { ldm: ldm.re, canonical: canonical.re }, names: { ldm: ldm.names, canonical: canonical.names } };
    });
  }

  /** A key or module path from one naming to the other; undefined when no rule names it. */
  map(path: string, from: Side, layout: L): string | undefined {
    const to: Side = from === 'ldm' ? 'canonical' : 'ldm';
    for (const { rule, pattern, names } of this.rules) {
      const m = pattern[from].exec(path);
      if (!m) continue;
      const v = this.indices(names[from], m, from, layout);
      if (!v) continue;
      const values = names[to].map((name) => (to === 'ldm' && this.slots[name] ? this.slots[name].write(v, layout) : v[name]));
      if (values.some((x) => x === undefined)) continue;
      let i = 0;
      const head = rule[to].replace(/\{[^}]+\}/g, () => String(values[i++]));
      const rest = m[names[from].length + 1];
      if (rest === undefined) return head;
      const renamed = rule.rest ? renameLeading(rest, rule.rest, from) : rest;
      return renamed === undefined ? undefined : `${head}.${renamed}`;
    }
    return undefined;
  }

  private indices(names: string[], m: RegExpExecArray, from: Side, layout: L): Indices | undefined {
    const v: Indices = {};
    for (const [i, name] of names.entries()) {
      const n = Number(m[i + 1]);
      const slot = from === 'ldm' ? this.slots[name] : undefined;
      if (!slot) {
        v[name] = n;
        continue;
      }
      const unpacked = slot.read(n, layout);
      if (!unpacked) return undefined;
      Object.assign(v, unpacked);
    }
    return v;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// UNet

/** What the UNet map needs to know about the network. */
export interface UnetLdmLayout {
  layersPerBlock: number;
  /** Whether up block b has attentions (decides whether its upsampler is `output_blocks.N.1` or `.2`). */
  upBlockHasAttention: (block: number) => boolean;
}

/** SD 1.x / 2.x: 2 layers per block; up block 0 has no attention. */
export const SD_UNET_LAYOUT: UnetLdmLayout = { layersPerBlock: 2, upBlockHasAttention: (b) => b > 0 };

const LDM_RESNET: Pairs = [
  ['in_layers.0', 'norm1'],
  ['in_layers.2', 'conv1'],
  ['out_layers.0', 'norm2'],
  ['out_layers.3', 'conv2'],
  ['emb_layers.1', 'time_emb_proj'],
  ['skip_connection', 'conv_shortcut'],
];

/**
 * LDM numbers its blocks along the path: with L layers per block, input block n = (L+1)·b + l + 1 is layer l of down
 * block b (l = L: its downsampler), output block n = (L+1)·b + l is layer l of up block b (up blocks have L+1
 * layers; the upsampler follows the last one, as part 1 without attention, 2 after it).
 */
const UNET_SLOTS: Record<string, Slot<UnetLdmLayout>> = {
  down: {
    read: (n, { layersPerBlock: L }) => (n >= 1 && (n - 1) % (L + 1) < L ? { b: Math.floor((n - 1) / (L + 1)), l: (n - 1) % (L + 1) } : undefined),
    write: ({ b, l }, { layersPerBlock: L }) => (l < L ? b * (L + 1) + l + 1 : undefined),
  },
  downsampler: {
    read: (n, { layersPerBlock: L }) => (n >= 1 && (n - 1) % (L + 1) === L ? { b: Math.floor((n - 1) / (L + 1)) } : undefined),
    write: ({ b }, { layersPerBlock: L }) => b * (L + 1) + L + 1,
  },
  up: {
    read: (n, { layersPerBlock: L }) => ({ b: Math.floor(n / (L + 1)), l: n % (L + 1) }),
    write: ({ b, l }, { layersPerBlock: L }) => (l <= L ? b * (L + 1) + l : undefined),
  },
  upsampler: {
    read: (n, { layersPerBlock: L }) => (n % (L + 1) === L ? { b: Math.floor(n / (L + 1)) } : undefined),
    write: ({ b }, { layersPerBlock: L }) => b * (L + 1) + L,
  },
  upsamplerPart: {
    read: (n) => (n === 1 || n === 2 ? {} : undefined),
    write: ({ b }, layout) => (layout.upBlockHasAttention(b) ? 2 : 1),
  },
};

const UNET = new PathTable<UnetLdmLayout>(
  [
    { ldm: 'time_embed.0', canonical: 'time_embedding.linear_1' },
    { ldm: 'time_embed.2', canonical: 'time_embedding.linear_2' },
    { ldm: 'input_blocks.0.0', canonical: 'conv_in' },
    { ldm: 'label_emb.0.0', canonical: 'add_embedding.linear_1' },
    { ldm: 'label_emb.0.2', canonical: 'add_embedding.linear_2' },
    { ldm: 'out.0', canonical: 'conv_norm_out' },
    { ldm: 'out.2', canonical: 'conv_out' },
    { ldm: 'input_blocks.{down}.0', canonical: 'down_blocks.{b}.resnets.{l}', rest: LDM_RESNET },
    { ldm: 'input_blocks.{down}.1', canonical: 'down_blocks.{b}.attentions.{l}' },
    { ldm: 'input_blocks.{downsampler}.0.op', canonical: 'down_blocks.{b}.downsamplers.0.conv' },
    { ldm: 'middle_block.0', canonical: 'mid_block.resnets.0', rest: LDM_RESNET },
    { ldm: 'middle_block.1', canonical: 'mid_block.attentions.0' },
    { ldm: 'middle_block.2', canonical: 'mid_block.resnets.1', rest: LDM_RESNET },
    { ldm: 'output_blocks.{up}.0', canonical: 'up_blocks.{b}.resnets.{l}', rest: LDM_RESNET },
    { ldm: 'output_blocks.{upsampler}.{upsamplerPart}.conv', canonical: 'up_blocks.{b}.upsamplers.0.conv' },
    { ldm: 'output_blocks.{up}.1', canonical: 'up_blocks.{b}.attentions.{l}' },
  ],
  UNET_SLOTS,
);

/**
 * LDM UNet key or module path (relative to `model.diffusion_model.`, or with that prefix) -> diffusers
 * UNet2DConditionModel key (without `unet.`). `layersPerBlock` is 2 for SD 1.x / 2.x.
 * Example: `input_blocks.4.1.proj_in` -> `down_blocks.1.attentions.0.proj_in`.
 */
export function ldmUnetKeyToCanonical(key: string, layersPerBlock = 2): string | undefined {
  if (key.startsWith(UNET_PREFIX)) key = key.slice(UNET_PREFIX.length);
  // Reading takes the upsampler at either part, so whether up blocks have attention does not matter here.
  return UNET.map(key, 'ldm', { ...SD_UNET_LAYOUT, layersPerBlock });
}

/** LDM-style UNet module path (as kohya LoRA keys may use) -> canonical module path; alias of ldmUnetKeyToCanonical. */
export function ldmUnetModuleToCanonical(modulePath: string, layersPerBlock = 2): string | undefined {
  return ldmUnetKeyToCanonical(modulePath, layersPerBlock);
}

/** Canonical UNet key (without `unet.`) -> LDM key (without `model.diffusion_model.`). */
export function canonicalUnetToLdm(key: string, layout: UnetLdmLayout = SD_UNET_LAYOUT): string | undefined {
  return UNET.map(key, 'canonical', layout);
}

// ---------------------------------------------------------------------------------------------------------------
// VAE

const VAE_RESNET: Pairs = [
  ['norm1', 'norm1'],
  ['conv1', 'conv1'],
  ['norm2', 'norm2'],
  ['conv2', 'conv2'],
  ['nin_shortcut', 'conv_shortcut'],
];
const VAE_ATTN: Pairs = [
  ['norm', 'group_norm'],
  ['q', 'to_q'],
  ['k', 'to_k'],
  ['v', 'to_v'],
  ['proj_out', 'to_out.0'],
];

/** The decoder's `up.i` is diffusers' `up_blocks.(levels-1-i)`; the mid block's resnets count from 1 in LDM. */
const VAE_SLOTS: Record<string, Slot<number>> = {
  level: {
    read: (n, levels) => (n < levels ? { b: levels - 1 - n } : undefined),
    write: ({ b }, levels) => (b < levels ? levels - 1 - b : undefined),
  },
  'k+1': {
    read: (n) => (n === 1 || n === 2 ? { k: n - 1 } : undefined),
    write: ({ k }) => (k === 0 || k === 1 ? k + 1 : undefined),
  },
};

const VAE = new PathTable<number>(
  [
    { ldm: 'quant_conv', canonical: 'quant_conv' },
    { ldm: 'post_quant_conv', canonical: 'post_quant_conv' },
    ...(['encoder', 'decoder'] as const).flatMap((c): PathRule[] => [
      { ldm: `${c}.conv_in`, canonical: `${c}.conv_in` },
      { ldm: `${c}.conv_out`, canonical: `${c}.conv_out` },
      { ldm: `${c}.norm_out`, canonical: `${c}.conv_norm_out` },
      { ldm: `${c}.mid.block_{k+1}`, canonical: `${c}.mid_block.resnets.{k}`, rest: VAE_RESNET },
      { ldm: `${c}.mid.attn_1`, canonical: `${c}.mid_block.attentions.0`, rest: VAE_ATTN },
    ]),
    { ldm: 'encoder.down.{i}.block.{j}', canonical: 'encoder.down_blocks.{i}.resnets.{j}', rest: VAE_RESNET },
    { ldm: 'encoder.down.{i}.downsample.conv', canonical: 'encoder.down_blocks.{i}.downsamplers.0.conv' },
    { ldm: 'decoder.up.{level}.block.{j}', canonical: 'decoder.up_blocks.{b}.resnets.{j}', rest: VAE_RESNET },
    { ldm: 'decoder.up.{level}.upsample.conv', canonical: 'decoder.up_blocks.{b}.upsamplers.0.conv' },
  ],
  VAE_SLOTS,
);

export interface CanonicalTarget {
  name: string;
  /** The stored tensor may be a 1x1 conv standing for a linear layer. */
  squeeze?: boolean;
}

/**
 * LDM VAE key (relative to `first_stage_model.`) -> diffusers AutoencoderKL key (without `vae.`).
 * `levels` is the number of resolution levels (4 for SD).
 */
export function ldmVaeKeyToCanonical(key: string, levels: number): CanonicalTarget | undefined {
  if (key.startsWith(VAE_PREFIX)) key = key.slice(VAE_PREFIX.length);
  const name = VAE.map(key, 'ldm', levels);
  if (name === undefined) return undefined;
  // The attention's q/k/v/out projections are 1x1 convs in LDM, linear layers in diffusers.
  const projection = /\.mid_block\.attentions\.0\.(?!group_norm\.)/.test(name) && name.endsWith('.weight');
  return projection ? { name, squeeze: true } : { name };
}

/** Canonical VAE key (without `vae.`) -> LDM key (without `first_stage_model.`). */
export function canonicalVaeToLdm(key: string, levels = 4): string | undefined {
  return VAE.map(key, 'canonical', levels);
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

/** OpenCLIP's text tower in CLIPTextModel names; its packed q/k/v `attn.in_proj_*` is mapped apart (one to three). */
const OPENCLIP = new PathTable<undefined>([
  { ldm: 'token_embedding', canonical: 'text_model.embeddings.token_embedding' },
  { ldm: 'positional_embedding', canonical: 'text_model.embeddings.position_embedding.weight', tensor: true },
  { ldm: 'text_projection', canonical: 'text_projection.weight', tensor: true },
  { ldm: 'ln_final', canonical: 'text_model.final_layer_norm' },
  {
    ldm: 'transformer.resblocks.{n}',
    canonical: 'text_model.encoder.layers.{n}',
    rest: [
      ['ln_1', 'layer_norm1'],
      ['ln_2', 'layer_norm2'],
      ['attn.out_proj', 'self_attn.out_proj'],
      ['mlp.c_fc', 'mlp.fc1'],
      ['mlp.c_proj', 'mlp.fc2'],
    ],
  },
]);

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
  const packed = /^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$/.exec(key);
  if (packed) {
    return (['q', 'k', 'v'] as const).map((p, i) => ({
      name: `text_model.encoder.layers.${packed[1]}.self_attn.${p}_proj.${packed[2]}`,
      rows: [i * width, (i + 1) * width] as [number, number],
    }));
  }
  const name = OPENCLIP.map(key, 'ldm', undefined);
  if (name === undefined) return undefined;
  return [name === 'text_projection.weight' ? { name, transpose: true } : { name }];
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
  const name = OPENCLIP.map(p, 'ldm', undefined);
  if (name !== undefined) return name;
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
  const qkv = /^text_model\.encoder\.layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)$/.exec(key);
  if (qkv) return `${prefix}transformer.resblocks.${qkv[1]}.attn.in_proj_${qkv[2]}`;
  const k = OPENCLIP.map(key, 'canonical', undefined);
  return k === undefined ? undefined : prefix + k;
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
