/**
 * Component files as published. Many one-step models ship only a UNet (Hyper-SDXL-1step-Unet,
 * sdxl_lightning_1step_unet_x0, nitrosd-*_unet, the DMD2 UNets), and users swap in a VAE (sdxl-vae-fp16-fix). A
 * component comes as a file (safetensors, or a PyTorch .bin read without executing it) or a diffusers component
 * folder (config.json + weights), in diffusers key style (`down_blocks.0...`, `decoder.up_blocks.0...`) or the
 * original LDM style, with or without its single-file prefix (`model.diffusion_model.input_blocks...`,
 * `first_stage_model.decoder.up...`, bare `input_blocks...`, `decoder.up...`). `convert <base> --unet/--vae` puts it
 * in place of the base's.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { BadInputError } from '../errors.js';
import type { Checkpoint } from '../families/types.js';
import { f32ToF16 } from '../safetensors/dtypes.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import type { UNetConfig, VaeConfig } from './configs.js';
import { expectedUnetWeights, unetConfigFromJson } from '../architectures/unet.js';
import { expectedVaeWeights, vaeConfigFromJson } from '../architectures/vae.js';
import { checkTensors } from './check-tensors.js';
import { buildLdmKeyMap, isKnownIgnorableKey, UNET_PREFIX, VAE_PREFIX } from './keymap-sd.js';
import { MappedSource } from './sources.js';
import type { TensorMeta, WeightSource } from './weight-source.js';
import { renameLegacyVaeAttention } from './folder.js';

export type ComponentName = 'unet' | 'vae';
export type KeyStyle = 'diffusers' | 'ldm';

export interface ComponentKeys {
  component: ComponentName;
  style: KeyStyle;
  /** The single-file prefix the keys carry (`model.diffusion_model.`, `first_stage_model.`), or ''. */
  prefix: string;
}

const has = (keys: readonly string[], re: RegExp) => keys.some((k) => re.test(k));

/** What a file holding one component is, from its key names; undefined for anything else (a full checkpoint too). */
export function detectComponentKeys(keys: readonly string[]): ComponentKeys | undefined {
  const meaningful = keys.filter((k) => !isKnownIgnorableKey(k));
  if (meaningful.length === 0) return undefined;
  const all = (prefix: string) => meaningful.every((k) => k.startsWith(prefix));
  if (all(UNET_PREFIX)) return { component: 'unet', style: 'ldm', prefix: UNET_PREFIX };
  if (all(VAE_PREFIX)) return { component: 'vae', style: 'ldm', prefix: VAE_PREFIX };
  if (has(meaningful, /^(model\.|first_stage_model\.|cond_stage_model\.|conditioner\.)/)) return undefined;
  if (has(meaningful, /^input_blocks\.\d+\./) && has(meaningful, /^out\.2\./)) return { component: 'unet', style: 'ldm', prefix: '' };
  if (has(meaningful, /^down_blocks\.\d+\./) && has(meaningful, /^conv_in\./) && has(meaningful, /^time_embedding\./)) {
    return { component: 'unet', style: 'diffusers', prefix: '' };
  }
  if (has(meaningful, /^(encoder\.down|decoder\.up)\.\d+\.block\./)) return { component: 'vae', style: 'ldm', prefix: '' };
  if (has(meaningful, /^(encoder\.down_blocks|decoder\.up_blocks)\.\d+\./)) return { component: 'vae', style: 'diffusers', prefix: '' };
  return undefined;
}

export interface OpenedComponent {
  component: ComponentName;
  style: KeyStyle;
  /** The tensor file or folder read. */
  path: string;
  /** Canonical names: `unet.*` / `vae.*`. */
  weights: MappedSource;
  /** The component folder's config.json, when there is one. */
  config?: Record<string, unknown>;
  /** Stored keys that map to nothing. */
  unmapped: string[];
}

const LABEL: Record<ComponentName, string> = { unet: 'UNet', vae: 'VAE' };

async function isDir(p: string): Promise<boolean> {
  const st = await stat(p).catch(() => {
    throw new BadInputError(p, 'no such file or folder', 'Check the path.');
  });
  return st.isDirectory();
}

const exists = (p: string) => stat(p).then(() => true, () => false);

/**
 * Opens `input` as the `expected` component: a file, a component folder (config.json + weights), or a pipeline
 * folder holding `<expected>/`. Refuses a file holding something else (the other component, a full checkpoint).
 */
export async function openComponent(input: string, expected: ComponentName): Promise<OpenedComponent> {
  let target = input;
  let config: Record<string, unknown> | undefined;
  if (await isDir(input)) {
    if (!(await exists(path.join(input, 'config.json'))) && (await exists(path.join(input, expected, 'config.json')))) target = path.join(input, expected);
    const configFile = path.join(target, 'config.json');
    if (await exists(configFile)) {
      try {
        config = JSON.parse(await readFile(configFile, 'utf8')) as Record<string, unknown>;
      } catch (e) {
        throw new BadInputError(configFile, `is not valid JSON (${(e as Error).message})`);
      }
    }
  }
  const set = await TensorSet.open(target);
  try {
    const keys = set.names();
    const kind = detectComponentKeys(keys);
    if (!kind) {
      throw new BadInputError(
        target,
        `is not a ${LABEL[expected]} file (${keys.length} tensors, e.g. ${keys.slice(0, 3).join(', ') || 'none'})`,
        `Pass a ${LABEL[expected]}-only file or folder (diffusers or LDM key names) to --${expected}.`,
      );
    }
    if (kind.component !== expected) {
      throw new BadInputError(target, `holds a ${LABEL[kind.component]}, not a ${LABEL[expected]}`, `Pass it with --${kind.component} instead.`);
    }
    const cls = config?._class_name;
    const wantClass = expected === 'unet' ? 'UNet2DConditionModel' : 'AutoencoderKL';
    if (typeof cls === 'string' && cls !== wantClass) {
      throw new BadInputError(path.join(target, 'config.json'), `names ${cls}, not ${wantClass}`, `Pass a ${wantClass} folder to --${expected}.`);
    }
    const { entries, unmapped } = mapComponent(keys, kind, (k) => set.info(k).shape);
    const weights = new MappedSource(
      [...entries].map(([name, ref]) => [name, { set, ref }]),
      [set],
      target,
    );
    return { component: expected, style: kind.style, path: target, weights, config, unmapped };
  } catch (e) {
    await set.close();
    throw e;
  }
}

function mapComponent(
  keys: string[],
  kind: ComponentKeys,
  shapeOf: (key: string) => number[],
): { entries: Map<string, { key: string; squeeze?: boolean }>; unmapped: string[] } {
  const entries = new Map<string, { key: string; squeeze?: boolean }>();
  const unmapped: string[] = [];
  if (kind.style === 'diffusers') {
    for (const key of keys) {
      if (isKnownIgnorableKey(key)) continue;
      entries.set(`${kind.component}.${kind.component === 'vae' ? renameLegacyVaeAttention(key) : key}`, { key });
    }
    return { entries, unmapped };
  }
  // LDM keys: through the single-file map, under the prefix it expects.
  const filePrefix = kind.component === 'unet' ? UNET_PREFIX : VAE_PREFIX;
  const stored = new Map(keys.map((k) => [filePrefix + k.slice(kind.prefix.length), k]));
  const map = buildLdmKeyMap([...stored.keys()], (k) => shapeOf(stored.get(k)!), 'clip');
  for (const [name, ref] of map.entries) entries.set(name, { ...ref, key: stored.get(ref.key)! });
  unmapped.push(...map.unmapped.map((k) => stored.get(k) ?? k));
  return { entries, unmapped };
}

/**
 * Checks a replacement component against the base it goes into, before anything is written: its tensors must be the
 * ones `config` implies (the component folder's own config, else the base's), and it must plug into the base (the
 * same latent channels; a UNet reading the base's text conditioning). Throws one BadInputError naming the file.
 */
export function checkComponentFits(opened: OpenedComponent, config: UNetConfig | VaeConfig, base: UNetConfig | VaeConfig, baseLabel: string): void {
  const mismatch = (what: string, got: unknown, want: unknown) =>
    new BadInputError(
      opened.path,
      `is a ${LABEL[opened.component]} with ${what} ${JSON.stringify(got)}, but ${baseLabel} needs ${JSON.stringify(want)}`,
      `Use a ${LABEL[opened.component]} made for the base model's family.`,
    );
  if (opened.component === 'unet') {
    const [c, b] = [config as UNetConfig, base as UNetConfig];
    for (const f of ['in_channels', 'out_channels', 'cross_attention_dim', 'addition_embed_type'] as const) {
      if (c[f] !== b[f]) throw mismatch(f, c[f], b[f]);
    }
    if (c.addition_embed_type && c.projection_class_embeddings_input_dim !== b.projection_class_embeddings_input_dim) {
      throw mismatch('projection_class_embeddings_input_dim', c.projection_class_embeddings_input_dim, b.projection_class_embeddings_input_dim);
    }
    checkOnly(opened, expectedUnetWeights(c));
  } else {
    const [c, b] = [config as VaeConfig, base as VaeConfig];
    if (c.latent_channels !== b.latent_channels) throw mismatch('latent_channels', c.latent_channels, b.latent_channels);
    if (c.block_out_channels.length !== b.block_out_channels.length) throw mismatch('downscale levels', c.block_out_channels.length, b.block_out_channels.length);
    checkOnly(opened, expectedVaeWeights(c));
  }
}

/** The component holds exactly the expected tensors: none missing or misshapen, none the config does not build. */
function checkOnly(opened: OpenedComponent, expected: Map<string, number[]>): void {
  checkTensors(opened.weights, expected, opened.path);
  const extra = opened.weights.names().filter((n) => !expected.has(n));
  if (extra.length) {
    throw new BadInputError(
      opened.path,
      `has ${extra.length} tensor(s) the ${LABEL[opened.component]} config does not build: ${extra.slice(0, 5).join('; ')}${extra.length > 5 ? `; and ${extra.length - 5} more` : ''}`,
      `Pass a ${LABEL[opened.component]} folder with its config.json, or one made for the base model's architecture.`,
    );
  }
}

export interface ReplacedComponent {
  component: ComponentName;
  /** What the user named (file, component folder or pipeline folder). */
  input: string;
  /** The file or component folder read. */
  path: string;
  style: KeyStyle;
}

/**
 * The checkpoint with its UNet and / or VAE replaced by component files, each checked against the base first (so a
 * wrong one is refused before anything is written). Takes ownership of the opened files: closing the result's
 * weights closes them.
 */
export async function withReplacedComponents(
  ckpt: Checkpoint,
  replacements: Partial<Record<ComponentName, string>>,
): Promise<{ ckpt: Checkpoint; replaced: ReplacedComponent[] }> {
  let weights = ckpt.weights;
  const configs = { ...ckpt.configs };
  const notes = [...ckpt.notes];
  const replaced: ReplacedComponent[] = [];
  const opened: OpenedComponent[] = [];
  try {
    for (const component of ['unet', 'vae'] as const) {
      const input = replacements[component];
      if (!input) continue;
      const base = configs[component] as UNetConfig | VaeConfig | undefined;
      // A UNet family's config has up_block_types; an AutoencoderKL's block_out_channels (SDXS's tiny VAE has neither).
      const fits = component === 'unet' ? Array.isArray((base as UNetConfig | undefined)?.up_block_types) : Array.isArray((base as VaeConfig | undefined)?.block_out_channels);
      if (!base || !fits) {
        throw new BadInputError(input, `cannot replace the ${LABEL[component]} of ${ckpt.path}: ${ckpt.family.label} has no ${component === 'unet' ? 'UNet' : 'AutoencoderKL VAE'}`, `--${component} applies to SD 1.x, SD 2.x and SDXL bases.`);
      }
      const c = await openComponent(input, component);
      opened.push(c);
      let config: UNetConfig | VaeConfig = base;
      const configFile = path.join(c.path, 'config.json');
      if (c.config) config = component === 'unet' ? unetConfigFromJson(c.config, configFile) : vaeConfigFromJson(c.config, configFile);
      checkComponentFits(c, config, base, ckpt.path);
      if (c.unmapped.length) notes.push(`${c.path}: ${c.unmapped.length} key(s) map to nothing and are ignored, e.g. ${c.unmapped.slice(0, 3).join(', ')}`);
      weights = withComponent(weights, component, c.weights);
      (configs as Record<string, object | undefined>)[component] = config;
      notes.push(`${LABEL[component]} from ${c.path} (${c.style} keys${c.config ? ', its config.json' : `, the base's ${component} config`})`);
      replaced.push({ component, input, path: c.path, style: c.style });
    }
  } catch (e) {
    await Promise.all(opened.map((c) => c.weights.close()));
    throw e;
  }
  return { ckpt: { ...ckpt, weights, configs, notes }, replaced };
}

/** `base` with every `<component>.*` weight taken from `replacement` instead. Closing it closes both. */
export function withComponent(base: WeightSource, component: ComponentName, replacement: WeightSource): WeightSource {
  const prefix = `${component}.`;
  const from = (name: string): WeightSource => (name.startsWith(prefix) ? replacement : base);
  const names = [...base.names().filter((n) => !n.startsWith(prefix)), ...replacement.names()].sort();
  return {
    names: () => [...names],
    has: (n) => from(n).has(n),
    meta: (n): TensorMeta => from(n).meta(n),
    readF32: (n) => from(n).readF32(n),
    readF16: (n, alloc) => {
      const source = from(n);
      return source.readF16 ? source.readF16(n, alloc) : source.readF32(n).then((v) => f32ToF16(v));
    },
    close: async () => {
      await Promise.all([base.close(), replacement.close()]);
    },
  };
}
