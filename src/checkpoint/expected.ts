/**
 * The canonical tensors (name -> shape) a config implies, as diffusers' UNet2DConditionModel / AutoencoderKL and
 * transformers' CLIPTextModel create them. Used to check a checkpoint before anything is built from it, so a missing
 * or misshapen tensor gives one error naming it.
 */
import { BadInputError } from '../errors.js';
import type { ClipTextConfig, UNetConfig, VaeConfig } from './configs.js';
import type { WeightSource } from './weight-source.js';

export type ShapeMap = Map<string, number[]>;

function linear(out: ShapeMap, name: string, o: number, i: number, bias = true): void {
  out.set(`${name}.weight`, [o, i]);
  if (bias) out.set(`${name}.bias`, [o]);
}
function conv(out: ShapeMap, name: string, o: number, i: number, k: number): void {
  out.set(`${name}.weight`, [o, i, k, k]);
  out.set(`${name}.bias`, [o]);
}
function norm(out: ShapeMap, name: string, c: number): void {
  out.set(`${name}.weight`, [c]);
  out.set(`${name}.bias`, [c]);
}

function resnet(out: ShapeMap, name: string, cin: number, cout: number, temb: number | null): void {
  norm(out, `${name}.norm1`, cin);
  conv(out, `${name}.conv1`, cout, cin, 3);
  if (temb !== null) linear(out, `${name}.time_emb_proj`, cout, temb);
  norm(out, `${name}.norm2`, cout);
  conv(out, `${name}.conv2`, cout, cout, 3);
  if (cin !== cout) conv(out, `${name}.conv_shortcut`, cout, cin, 1);
}

function transformer2d(out: ShapeMap, name: string, c: number, ctx: number, depth: number, linearProj: boolean, onlyCross = false): void {
  norm(out, `${name}.norm`, c);
  const proj = (p: string): void => (linearProj ? linear(out, p, c, c) : conv(out, p, c, c, 1));
  proj(`${name}.proj_in`);
  for (let d = 0; d < depth; d++) {
    const b = `${name}.transformer_blocks.${d}`;
    for (const n of ['norm1', 'norm2', 'norm3']) norm(out, `${b}.${n}`, c);
    for (const [attn, kv] of [['attn1', onlyCross ? ctx : c], ['attn2', ctx]] as const) {
      linear(out, `${b}.${attn}.to_q`, c, c, false);
      linear(out, `${b}.${attn}.to_k`, c, kv, false);
      linear(out, `${b}.${attn}.to_v`, c, kv, false);
      linear(out, `${b}.${attn}.to_out.0`, c, c);
    }
    linear(out, `${b}.ff.net.0.proj`, 8 * c, c);
    linear(out, `${b}.ff.net.2`, c, 4 * c);
  }
  proj(`${name}.proj_out`);
}

export function expectedUnetTensors(cfg: UNetConfig, prefix = 'unet.'): ShapeMap {
  const out: ShapeMap = new Map();
  const ch = cfg.block_out_channels;
  const n = ch.length;
  const L = cfg.layers_per_block;
  const temb = 4 * ch[0];
  const ctx = cfg.cross_attention_dim;
  const depth = cfg.transformer_layers_per_block;
  const lin = cfg.use_linear_projection;
  conv(out, 'conv_in', ch[0], cfg.in_channels, 3);
  linear(out, 'time_embedding.linear_1', temb, ch[0]);
  linear(out, 'time_embedding.linear_2', temb, temb);
  if (cfg.time_cond_proj_dim) linear(out, 'time_embedding.cond_proj', ch[0], cfg.time_cond_proj_dim, false);
  if (cfg.addition_embed_type === 'text_time') {
    linear(out, 'add_embedding.linear_1', temb, cfg.projection_class_embeddings_input_dim!);
    linear(out, 'add_embedding.linear_2', temb, temb);
  }
  for (let i = 0; i < n; i++) {
    const cin = i === 0 ? ch[0] : ch[i - 1];
    const cross = cfg.down_block_types[i] === 'CrossAttnDownBlock2D';
    for (let j = 0; j < L; j++) {
      resnet(out, `down_blocks.${i}.resnets.${j}`, j === 0 ? cin : ch[i], ch[i], temb);
      if (cross) transformer2d(out, `down_blocks.${i}.attentions.${j}`, ch[i], ctx, depth[i], lin, cfg.only_cross_attention[i]);
    }
    if (i < n - 1) conv(out, `down_blocks.${i}.downsamplers.0.conv`, ch[i], ch[i], 3);
  }
  const last = ch[n - 1];
  if (cfg.mid_block_type !== null) {
    resnet(out, 'mid_block.resnets.0', last, last, temb);
    transformer2d(out, 'mid_block.attentions.0', last, ctx, depth[n - 1], lin);
    resnet(out, 'mid_block.resnets.1', last, last, temb);
  }
  const rev = [...ch].reverse();
  const revDepth = [...depth].reverse();
  const revOnlyCross = [...cfg.only_cross_attention].reverse();
  for (let i = 0; i < n; i++) {
    const cout = rev[i];
    const prev = i === 0 ? rev[0] : rev[i - 1];
    const skipIn = rev[Math.min(i + 1, n - 1)];
    const cross = cfg.up_block_types[i] === 'CrossAttnUpBlock2D';
    for (let j = 0; j <= L; j++) {
      const skip = j === L ? skipIn : cout;
      const resIn = j === 0 ? prev : cout;
      resnet(out, `up_blocks.${i}.resnets.${j}`, resIn + skip, cout, temb);
      if (cross) transformer2d(out, `up_blocks.${i}.attentions.${j}`, cout, ctx, revDepth[i], lin, revOnlyCross[i]);
    }
    if (i < n - 1) conv(out, `up_blocks.${i}.upsamplers.0.conv`, cout, cout, 3);
  }
  norm(out, 'conv_norm_out', ch[0]);
  conv(out, 'conv_out', cfg.out_channels, ch[0], 3);
  return withPrefix(out, prefix);
}

function vaeAttention(out: ShapeMap, name: string, c: number): void {
  norm(out, `${name}.group_norm`, c);
  for (const p of ['to_q', 'to_k', 'to_v', 'to_out.0']) linear(out, `${name}.${p}`, c, c);
}

export function expectedVaeTensors(cfg: VaeConfig, prefix = 'vae.'): ShapeMap {
  const out: ShapeMap = new Map();
  const ch = cfg.block_out_channels;
  const n = ch.length;
  const L = cfg.layers_per_block;
  const last = ch[n - 1];
  const lat = cfg.latent_channels;
  const mid = (part: string): void => {
    resnet(out, `${part}.mid_block.resnets.0`, last, last, null);
    if (cfg.mid_block_add_attention) vaeAttention(out, `${part}.mid_block.attentions.0`, last);
    resnet(out, `${part}.mid_block.resnets.1`, last, last, null);
  };
  conv(out, 'encoder.conv_in', ch[0], cfg.in_channels, 3);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < L; j++) resnet(out, `encoder.down_blocks.${i}.resnets.${j}`, j === 0 ? (i === 0 ? ch[0] : ch[i - 1]) : ch[i], ch[i], null);
    if (i < n - 1) conv(out, `encoder.down_blocks.${i}.downsamplers.0.conv`, ch[i], ch[i], 3);
  }
  mid('encoder');
  norm(out, 'encoder.conv_norm_out', last);
  conv(out, 'encoder.conv_out', 2 * lat, last, 3);
  if (cfg.use_quant_conv) conv(out, 'quant_conv', 2 * lat, 2 * lat, 1);
  if (cfg.use_post_quant_conv) conv(out, 'post_quant_conv', lat, lat, 1);
  conv(out, 'decoder.conv_in', last, lat, 3);
  mid('decoder');
  const rev = [...ch].reverse();
  for (let i = 0; i < n; i++) {
    const prev = i === 0 ? rev[0] : rev[i - 1];
    for (let j = 0; j <= L; j++) resnet(out, `decoder.up_blocks.${i}.resnets.${j}`, j === 0 ? prev : rev[i], rev[i], null);
    if (i < n - 1) conv(out, `decoder.up_blocks.${i}.upsamplers.0.conv`, rev[i], rev[i], 3);
  }
  norm(out, 'decoder.conv_norm_out', ch[0]);
  conv(out, 'decoder.conv_out', cfg.out_channels, ch[0], 3);
  return withPrefix(out, prefix);
}

export function expectedClipTextTensors(cfg: ClipTextConfig, prefix = 'text_encoder.'): ShapeMap {
  const out: ShapeMap = new Map();
  const h = cfg.hidden_size;
  out.set('text_model.embeddings.token_embedding.weight', [cfg.vocab_size, h]);
  out.set('text_model.embeddings.position_embedding.weight', [cfg.max_position_embeddings, h]);
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `text_model.encoder.layers.${l}`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) linear(out, `${p}.self_attn.${proj}`, h, h);
    norm(out, `${p}.layer_norm1`, h);
    linear(out, `${p}.mlp.fc1`, cfg.intermediate_size, h);
    linear(out, `${p}.mlp.fc2`, h, cfg.intermediate_size);
    norm(out, `${p}.layer_norm2`, h);
  }
  norm(out, 'text_model.final_layer_norm', h);
  if (cfg.projection_dim !== null) out.set('text_projection.weight', [cfg.projection_dim, h]);
  return withPrefix(out, prefix);
}

function withPrefix(m: ShapeMap, prefix: string): ShapeMap {
  return new Map([...m].map(([k, v]) => [prefix + k, v]));
}

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);

/** Throws one BadInputError naming missing and misshapen tensors (up to a few of each). */
export function checkTensors(source: WeightSource, expected: ShapeMap, file: string): void {
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const [name, shape] of expected) {
    if (!source.has(name)) missing.push(name);
    else {
      const got = source.meta(name).shape;
      if (!sameShape(got, shape)) wrong.push(`${name} is [${got}], expected [${shape}]`);
    }
  }
  if (missing.length === 0 && wrong.length === 0) return;
  const parts: string[] = [];
  const few = (list: string[]): string => list.slice(0, 5).join('; ') + (list.length > 5 ? `; and ${list.length - 5} more` : '');
  if (missing.length) parts.push(`${missing.length} required tensor(s) missing: ${few(missing)}`);
  if (wrong.length) parts.push(`${wrong.length} tensor(s) with the wrong shape: ${few(wrong)}`);
  throw new BadInputError(
    file,
    parts.join('. '),
    'The checkpoint is incomplete, damaged, or of an architecture onestep does not support.',
  );
}
