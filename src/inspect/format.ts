/** The human-readable form of an InspectReport. */
import type { InspectReport } from './report.js';
import { familyLabel as labelOf } from '../families/index.js';


const LAYOUT_LABELS: Record<string, string> = {
  'single-file': 'single file (original LDM / CompVis keys)',
  diffusers: 'diffusers folder',
  lora: 'LoRA',
};

const KEY_STYLE_LABELS: Record<string, string> = {
  kohya: 'kohya / A1111 keys (lora_unet_*, lora_te_*)',
  peft: 'diffusers / PEFT keys (unet.*.lora_A / lora_B)',
  'diffusers-legacy': 'older diffusers keys (.lora.down / .lora.up, attention processors)',
  unprefixed: 'unprefixed diffusers UNet keys',
  mixed: 'mixed key styles',
  none: 'no key style',
};

/** Config keys worth a line in human output, per component (whichever are present). */
const CONFIG_HIGHLIGHTS: Record<string, string[]> = {
  unet: ['sample_size', 'block_out_channels', 'layers_per_block', 'cross_attention_dim', 'attention_head_dim', 'use_linear_projection', 'addition_embed_type'],
  transformer: ['sample_size', 'num_layers', 'num_attention_heads', 'attention_head_dim', 'patch_size', 'caption_channels', 'out_channels'],
  text_encoder: ['hidden_size', 'd_model', 'num_hidden_layers', 'num_layers', 'num_attention_heads', 'num_heads', 'hidden_act', 'vocab_size'],
  text_encoder_2: ['hidden_size', 'num_hidden_layers', 'num_attention_heads', 'hidden_act', 'projection_dim'],
  vae: ['block_out_channels', 'latent_channels', 'scaling_factor'],
  scheduler: ['_class_name', 'prediction_type', 'beta_schedule', 'num_train_timesteps'],
};

/** Metadata keys shown in human output (all of them are in --json). */
const METADATA_HIGHLIGHTS = [
  'modelspec.title',
  'modelspec.architecture',
  'modelspec.implementation',
  'modelspec.author',
  'modelspec.resolution',
  'modelspec.prediction_type',
  'ss_output_name',
  'ss_sd_model_name',
  'ss_base_model_version',
  'ss_v2',
  'ss_network_module',
  'ss_network_dim',
  'ss_network_alpha',
  'ss_resolution',
  'ss_num_train_images',
  'ss_epoch',
  'ss_steps',
  'ss_training_comment',
];

function count(n: number): string {
  return n.toLocaleString('en-US');
}

function short(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

function clip(s: string, max = 100): string {
  const one = s.replace(/\s+/g, ' ');
  return one.length > max ? `${one.slice(0, max - 1)}…` : one;
}

function familyLabel(family: string): string {
  return family
    .split('|')
    .map(labelOf)
    .join(' or ');
}

export function formatInspectReport(r: InspectReport): string {
  const lines: string[] = [r.path];
  const field = (name: string, value: string) => lines.push(`  ${`${name}:`.padEnd(13)}${value}`);
  field('Kind', r.kind === 'lora' ? 'LoRA' : r.kind === 'component' ? `${Object.keys(r.components)[0] === 'vae' ? 'VAE' : 'UNet'} alone` : 'checkpoint');
  field('Layout', r.lora ? `LoRA, ${KEY_STYLE_LABELS[r.lora.keyStyle] ?? r.lora.keyStyle}` : (LAYOUT_LABELS[r.layout] ?? r.layout));
  field('Family', familyLabel(r.family) + (r.lora ? ` (${r.lora.familyEvidence})` : ''));
  if (r.kind === 'checkpoint') field('Convertible', r.convertible ? 'yes' : 'no');
  field('Parameters', `${short(r.totalParameters)} (${count(r.totalParameters)})`);

  const names = Object.keys(r.components);
  const width = Math.max(12, ...names.map((n) => n.length));
  for (const name of names) {
    const c = r.components[name];
    const dtypes = Object.entries(c.dtypes)
      .map(([d, n]) => (Object.keys(c.dtypes).length > 1 ? `${d} ${short(n)}` : d))
      .join(', ');
    lines.push(`    ${name.padEnd(width)} ${count(c.parameters).padStart(15)}  ${short(c.parameters).padStart(8)}  ${String(c.tensors).padStart(5)} tensors  ${dtypes}`);
  }
  if (r.unused.tensors > 0) {
    field('Unused', `${r.unused.tensors} stored tensor(s), ${count(r.unused.parameters)} parameters, e.g. ${r.unused.examples.join(', ')}`);
  }

  if (r.lora) {
    const l = r.lora;
    const perComponent = Object.entries(l.modulesPerComponent).map(([c, n]) => `${c} ${n}`).join(', ');
    field('Modules', `${l.modules} (${perComponent})`);
    field('Kinds', Object.entries(l.kinds).map(([k, n]) => `${k} ${n}`).join(', '));
    field('Rank/alpha', l.rankAlpha.map((p) => `rank ${p.rank} alpha ${p.alpha} (${p.modules} modules)`).join('; '));
    if (l.doraModules) field('DoRA', `${l.doraModules} module(s) with a magnitude vector`);
  }

  if (r.config) {
    const configLines: string[] = [];
    for (const [component, keys] of Object.entries(CONFIG_HIGHLIGHTS)) {
      const cfg = r.config[component];
      if (!cfg) continue;
      const parts = keys.filter((k) => cfg[k] !== undefined && cfg[k] !== null).map((k) => `${k} ${JSON.stringify(cfg[k])}`);
      if (parts.length) configLines.push(`    ${component}: ${parts.join(', ')}`);
    }
    if (configLines.length) {
      lines.push('  Config:');
      lines.push(...configLines);
    }
  }

  const metaKeys = Object.keys(r.metadata);
  if (metaKeys.length) {
    const shown = METADATA_HIGHLIGHTS.filter((k) => k in r.metadata);
    const suffix = shown.length === metaKeys.length ? '' : shown.length ? `, ${metaKeys.length - shown.length} more in --json` : ' (see --json)';
    field('Metadata', `${metaKeys.length} key(s)${suffix}`);
    for (const k of shown) lines.push(`    ${k}: ${clip(r.metadata[k])}`);
  }

  if (r.notes.length) {
    lines.push('  Notes:');
    for (const n of r.notes) lines.push(`    - ${n}`);
  }
  if (r.warnings.length) {
    lines.push('  Warnings:');
    for (const w of r.warnings) lines.push(`    ! ${w}`);
  }
  return lines.join('\n');
}
