/**
 * The LoRA key grammar: which tensor of which module a key is. kohya/A1111 (`lora_unet_*`, `lora_te_*`,
 * `lora_te1_/lora_te2_`, `lora_transformer_*`), diffusers/PEFT (`unet.<module>.lora_A.weight`), diffusers' older
 * formats (`.lora.down.weight`, `.lora_linear_layer.down.weight`, attention processors
 * `processor.to_q_lora.down.weight`), LyCORIS (LoHa, LoKr, LoCon's `lora_mid`), full `diff`, DoRA magnitudes.
 */

export type LoraComponent = 'unet' | 'text_encoder' | 'text_encoder_2' | 'transformer';
export type LoraKeyStyle = 'kohya' | 'peft' | 'diffusers-legacy' | 'unprefixed';

/** Tensor roles inside one module. `down`/`up` are LoRA's A/B. */
const ROLE_SUFFIXES: [suffix: string, role: string][] = [
  ['.lora_down.weight', 'down'],
  ['.lora_up.weight', 'up'],
  ['.lora_mid.weight', 'mid'],
  ['.lora_A.weight', 'down'],
  ['.lora_B.weight', 'up'],
  ['.lora_A.default.weight', 'down'],
  ['.lora_B.default.weight', 'up'],
  ['.lora.down.weight', 'down'],
  ['.lora.up.weight', 'up'],
  ['.lora_linear_layer.down.weight', 'down'],
  ['.lora_linear_layer.up.weight', 'up'],
  ['.lora_magnitude_vector.weight', 'dora'],
  ['.lora_magnitude_vector.default.weight', 'dora'],
  ['.lora_magnitude_vector', 'dora'],
  ['.dora_scale', 'dora'],
  ['.alpha', 'alpha'],
  ['.hada_w1_a', 'hada_w1_a'],
  ['.hada_w1_b', 'hada_w1_b'],
  ['.hada_w2_a', 'hada_w2_a'],
  ['.hada_w2_b', 'hada_w2_b'],
  ['.hada_t1', 'hada_t1'],
  ['.hada_t2', 'hada_t2'],
  ['.lokr_w1', 'lokr_w1'],
  ['.lokr_w1_a', 'lokr_w1_a'],
  ['.lokr_w1_b', 'lokr_w1_b'],
  ['.lokr_w2', 'lokr_w2'],
  ['.lokr_w2_a', 'lokr_w2_a'],
  ['.lokr_w2_b', 'lokr_w2_b'],
  ['.lokr_t2', 'lokr_t2'],
  ['.diff', 'diff'],
];

/** diffusers' attention-processor LoRA: `<attn>.processor.to_q_lora.down.weight` -> module `<attn>.to_q`. */
const PROCESSOR_RE = /^(.*)\.processor\.(to_q|to_k|to_v|to_out|add_q_proj|add_k_proj|add_v_proj|to_add_out)_lora\.(down|up)\.weight$/;
const PROCESSOR_MODULE: Record<string, string> = { to_out: 'to_out.0', to_add_out: 'to_add_out' };

const UNPREFIXED_UNET_RE = /^(down_blocks|mid_block|up_blocks|conv_in|conv_out|time_embedding|add_embedding)\./;
/** A DiT's own module names (PixArt's PixArtTransformer2DModel), as PEFT saves an adapter of the transformer alone. */
const UNPREFIXED_TRANSFORMER_RE = /^(transformer_blocks|pos_embed|adaln_single|caption_projection|proj_out)(\.|$)/;

export interface LoraModuleGroup {
  /** Common key prefix in the LoRA file, e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`. */
  prefix: string;
  component: LoraComponent;
  style: LoraKeyStyle;
  /** Module path after the component prefix: underscored for kohya (`down_blocks_0_...`), dotted otherwise. */
  path: string;
  /** role -> key in the file */
  keys: Map<string, string>;
}

/** A key's module prefix and its role in the module (down, up, alpha, hada_w1_a, ...), or undefined. */
export function splitKey(key: string): { prefix: string; role: string } | undefined {
  const proc = PROCESSOR_RE.exec(key);
  if (proc) return { prefix: `${proc[1]}.${PROCESSOR_MODULE[proc[2]] ?? proc[2]}`, role: proc[3] };
  for (const [suffix, role] of ROLE_SUFFIXES) {
    if (key.endsWith(suffix) && key.length > suffix.length) return { prefix: key.slice(0, -suffix.length), role };
  }
  return undefined;
}

/** The component, key style and module path a module prefix names, or undefined. */
export function locateModule(prefix: string): Pick<LoraModuleGroup, 'component' | 'style' | 'path'> | undefined {
  const kohya: [string, LoraComponent][] = [
    ['lora_unet_', 'unet'],
    ['lora_te1_', 'text_encoder'],
    ['lora_te2_', 'text_encoder_2'],
    ['lora_te_', 'text_encoder'],
    ['lora_transformer_', 'transformer'],
  ];
  for (const [p, component] of kohya) {
    if (prefix.startsWith(p)) return { component, style: 'kohya', path: prefix.slice(p.length) };
  }
  const dotted: [string, LoraComponent][] = [
    ['unet.', 'unet'],
    ['text_encoder.', 'text_encoder'],
    ['text_encoder_2.', 'text_encoder_2'],
    ['transformer.', 'transformer'],
  ];
  for (const [p, component] of dotted) {
    if (prefix.startsWith(p)) {
      let path = prefix.slice(p.length);
      if (path.startsWith('base_model.model.')) path = path.slice('base_model.model.'.length);
      return { component, style: 'peft', path };
    }
  }
  if (UNPREFIXED_UNET_RE.test(prefix)) return { component: 'unet', style: 'unprefixed', path: prefix };
  const bare = prefix.startsWith('base_model.model.') ? prefix.slice('base_model.model.'.length) : prefix;
  if (UNPREFIXED_TRANSFORMER_RE.test(bare)) return { component: 'transformer', style: 'unprefixed', path: bare };
  return undefined;
}

export interface PeftAdapterConfig {
  /** Per component (or '' for a config that names none). */
  get(component: LoraComponent, path: string, rank: number): number | undefined;
}

/**
 * diffusers >= 0.33 stores the PEFT LoraConfig of each component in the `lora_adapter_metadata` metadata entry
 * (keys prefixed `unet.` / `text_encoder.`); PEFT's own adapters carry the same fields without prefix. Returns the
 * alpha to use for a module (with rsLoRA folded in as an equivalent alpha), or undefined when nothing says.
 */
export function peftAdapterConfig(metadata: Readonly<Record<string, string>>): PeftAdapterConfig | undefined {
  const raw = metadata['lora_adapter_metadata'] ?? metadata['adapter_config'];
  if (raw === undefined) return undefined;
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const field = (component: string, name: string): unknown => cfg[`${component}.${name}`] ?? cfg[name];
  return {
    get(component, path, rank) {
      let alpha = field(component, 'lora_alpha');
      const pattern = field(component, 'alpha_pattern');
      if (pattern && typeof pattern === 'object') {
        for (const [p, v] of Object.entries(pattern as Record<string, unknown>)) {
          if (path === p || path.endsWith(`.${p}`)) alpha = v;
        }
      }
      if (typeof alpha !== 'number') return undefined;
      // rsLoRA scales by alpha / sqrt(r): the same as a plain alpha of alpha * sqrt(r).
      return field(component, 'use_rslora') === true ? alpha * Math.sqrt(rank) : alpha;
    },
  };
}
