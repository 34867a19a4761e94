/** Opens a checkpoint (diffusers folder or single .safetensors file) as canonical weights plus configs. */
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { SD_TEXT_OUTPUT, type ClipTextOutput } from '../architectures/clip-text.js';
import { BadInputError } from '../errors.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import type { ClipTextConfig, PredictionType, SchedulerConfig, UNetConfig, VaeConfig } from './configs.js';
import { detectFolder, detectSingleFile, isDirectory } from './detect.js';
import { checkTensors, expectedClipTextTensors, expectedUnetTensors, expectedVaeTensors } from './expected.js';
import {
  clipTextConfigFromJson,
  inferClipTextConfig,
  inferUnetConfig,
  inferVaeConfig,
  parseConfigOverrides,
  type ConfigOverrides,
  schedulerConfigFromJson,
  sdScheduler,
  unetConfigFromJson,
  unsupportedUnetFeatures,
  vaeConfigFromJson,
} from './infer-config.js';
import { buildLdmKeyMap, type LdmLayout } from './keymap-sd.js';
import { MappedSource } from './sources.js';
import type { WeightSource } from './weight-source.js';

export type Family = 'sd1' | 'sd2' | 'sdxl' | 'pixart-alpha';
export type Layout = 'single-file' | 'diffusers';

export interface Checkpoint {
  path: string;
  layout: Layout;
  family: Family;
  /**
   * Canonical names: `unet.<diffusers UNet2DConditionModel key>`, `vae.<AutoencoderKL key>`,
   * `text_encoder.<transformers CLIPTextModel key>`; PixArt: `transformer.*`, `text_encoder.*` (T5), `vae.*`.
   * For single files this is a MappedSource (its sourceOf(name) gives the file's own key).
   */
  weights: WeightSource;
  unet?: UNetConfig;
  vae: VaeConfig;
  textEncoder?: ClipTextConfig;
  /** Which hidden state the text encoder graph outputs (absent: SD_TEXT_OUTPUT, last_hidden_state). */
  textEncoderOutput?: ClipTextOutput;
  scheduler: SchedulerConfig;
  /** Each component's config.json as read (folders) or inferred (single files, in config.json form). */
  rawConfigs: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /** Single files: how canonical names map back to the file's keys (for writers that keep the file's layout). */
  ldmLayout?: LdmLayout;
  /** A diffusers folder's tokenizer/ (single files: undefined; convert ships the standard CLIP vocab). */
  tokenizerDir?: string;
  notes: string[];
  /** Keys of the input that map to nothing used (position_ids, DDPM buffers and other known-ignorable keys excluded). */
  unmappedKeys: string[];
  /** A single file's safetensors metadata (modelspec.*, ss_*); empty for folders. */
  metadata: Readonly<Record<string, string>>;
  sha256?: never;
}

export interface OpenOptions {
  /** Overrides the prediction type (single files do not record it; SD 2.x 768-v models need 'v_prediction'). */
  predictionType?: PredictionType;
  /**
   * Single files: a diffusers folder whose config files (unet/, vae/, text_encoder/, scheduler/, tokenizer/) describe
   * the file's networks, as diffusers' `from_single_file(config=...)` takes one. Head counts, for one, are not
   * visible in tensor shapes. When not given, a folder `<name>/` beside `<name>.safetensors` is used if it has a
   * model_index.json (the way A1111 reads a `<name>.yaml` beside a checkpoint).
   */
  configDir?: string;
}

/** The config folder for a single file: the given one, or a diffusers folder of the same name beside it. */
async function findConfigDir(file: string, given: string | undefined): Promise<string | undefined> {
  if (given) {
    if (!(await isDirectory(given))) throw new BadInputError(given, 'is not a folder', 'Pass a diffusers folder (with unet/, vae/, text_encoder/ config files) to --config.');
    return given;
  }
  const sibling = join(dirname(file), basename(file).replace(/\.safetensors$/i, ''));
  return sibling !== file && (await exists(join(sibling, 'model_index.json'))) ? sibling : undefined;
}

/** config.json files of a config folder, in the onestep.config form, plus its scheduler and tokenizer. */
async function readConfigDir(dir: string): Promise<{ overrides: ConfigOverrides; prediction?: PredictionType; tokenizerDir?: string }> {
  const overrides: ConfigOverrides = {};
  for (const c of ['unet', 'vae', 'text_encoder'] as const) {
    const f = join(dir, c, 'config.json');
    if (await exists(f)) overrides[c] = await readJson(f);
  }
  const schedulerFile = join(dir, 'scheduler', 'scheduler_config.json');
  const prediction = (await exists(schedulerFile)) ? ((await readJson(schedulerFile)).prediction_type as PredictionType | undefined) : undefined;
  const tokenizerDir = (await exists(join(dir, 'tokenizer', 'vocab.json'))) ? join(dir, 'tokenizer') : undefined;
  return { overrides, prediction, tokenizerDir };
}

const LORA_HINT =
  'Merge it into a checkpoint with `onestep lora merge <checkpoint> <lora>`, or apply it while converting with `--lora <file>`.';

export async function openCheckpoint(path: string, opts: OpenOptions = {}): Promise<Checkpoint> {
  return (await isDirectory(path)) ? openFolder(path, opts) : openSingleFile(path, opts);
}

// ---------------------------------------------------------------------------------------------------------------

async function openSingleFile(path: string, opts: OpenOptions): Promise<Checkpoint> {
  const set = await TensorSet.open(path);
  try {
    const keys = set.names();
    const kind = detectSingleFile(keys);
    const sample = (re: RegExp): string =>
      keys
        .filter((k) => re.test(k))
        .slice(0, 3)
        .join(', ');
    switch (kind.kind) {
      case 'lora':
        throw new BadInputError(
          path,
          `is a LoRA (keys like ${sample(/lora|hada|lokr/)}), not a checkpoint`,
          LORA_HINT,
        );
      case 'sdxl':
        throw new BadInputError(
          path,
          `is an SDXL checkpoint (keys like ${sample(/^conditioner\.embedders\.|label_emb/)}); SDXL conversion is not supported`,
          'onestep converts SD 1.x and SD 2.x checkpoints.',
        );
      case 'unsupported':
        throw new BadInputError(path, `looks like ${kind.what}, not a full SD 1.x / 2.x checkpoint`, 'Pass a complete checkpoint (UNet, VAE and text encoder) or a diffusers folder.');
      case 'unknown':
        throw new BadInputError(
          path,
          `has no tensor names onestep recognizes (${keys.length} tensors, e.g. ${keys.slice(0, 4).join(', ') || 'none'})`,
          'Expected an SD 1.x / 2.x single-file checkpoint (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*) or a diffusers folder.',
        );
    }
    const family = kind.kind;
    const configDir = await findConfigDir(path, opts.configDir);
    const fromDir = configDir ? await readConfigDir(configDir) : undefined;
    const fromMetadata = parseConfigOverrides(set.metadata, path);
    const overrides = fromDir || fromMetadata ? { ...fromMetadata, ...fromDir?.overrides } : undefined;
    const layers = overrides?.text_encoder?.num_hidden_layers;
    const map = buildLdmKeyMap(
      keys,
      (k) => set.info(k).shape,
      family === 'sd1' ? 'clip' : 'openclip',
      typeof layers === 'number' ? layers : undefined,
    );
    const weights = new MappedSource(
      [...map.entries].map(([name, ref]) => [name, { set, ref }]),
      [set],
      path,
    );
    const names = weights.names();
    const metaOf = (n: string) => (weights.has(n) ? weights.meta(n) : undefined);
    let unet = inferUnetConfig(names, metaOf, family, path);
    let vae = inferVaeConfig(names, metaOf, path);
    let textEncoder = inferClipTextConfig(names, metaOf, family, path);
    const notes = ['configs inferred from tensor shapes', ...map.notes];
    const towerLayers = textEncoder.num_hidden_layers;
    if (overrides) {
      if (overrides.unet) unet = unetConfigFromJson(overrides.unet, unet);
      if (overrides.vae) vae = vaeConfigFromJson(overrides.vae, vae);
      // A config's num_hidden_layers says which OpenCLIP layer SD 2.x conditions on (map.textLayer); the encoder
      // itself is the whole tower the file holds.
      if (overrides.text_encoder) textEncoder = { ...clipTextConfigFromJson(overrides.text_encoder, textEncoder), num_hidden_layers: towerLayers };
      notes.push(
        configDir
          ? `configs from ${configDir} (${Object.keys(overrides).join(', ')}) override the ones inferred from shapes`
          : `configs from the file's metadata "onestep.config" (${Object.keys(overrides).join(', ')}) override the inferred ones`,
      );
    }
    if (overrides?.unet?.attention_head_dim === undefined && overrides?.unet?.num_attention_heads === undefined) {
      notes.push(
        family === 'sd1'
          ? 'UNet attention heads: 8 per attention (SD 1.x rule; heads are not visible in shapes)'
          : `UNet attention heads: channels/64 per block = [${unet.attention_head_dim}] (SD 2.x rule; heads are not visible in shapes)`,
      );
    }
    if (overrides?.text_encoder?.num_attention_heads === undefined) {
      notes.push(`text encoder heads: hidden/64 = ${textEncoder.num_attention_heads} (heads are not visible in shapes)`);
    }
    const prediction = opts.predictionType ?? fromDir?.prediction;
    if (family === 'sd2' && !prediction) {
      notes.push('SD 2.x single file: prediction type assumed epsilon; 768-v models need --prediction v_prediction');
    }
    checkTensors(weights, sdExpectedTensors(unet, vae, textEncoder), path);
    return {
      path,
      layout: 'single-file',
      family,
      weights,
      unet,
      vae,
      textEncoder,
      textEncoderOutput: map.textLayer === undefined ? undefined : { ...SD_TEXT_OUTPUT, layer: map.textLayer },
      scheduler: sdScheduler(prediction ?? 'epsilon'),
      rawConfigs: { unet: { ...unet }, vae: { ...vae }, text_encoder: { ...textEncoder } },
      ldmLayout: map.layout,
      tokenizerDir: fromDir?.tokenizerDir,
      notes,
      unmappedKeys: map.unmapped,
      metadata: set.metadata,
    };
  } catch (e) {
    await set.close();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------------

/** diffusers < 0.14 saved the VAE's mid attention as query/key/value/proj_attn. */
function renameLegacyVaeAttention(key: string): string {
  return key.replace(/(\.attentions\.\d+\.)(query|key|value|proj_attn)\./, (_, head: string, p: string) => {
    const to = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' }[p as 'query'];
    return `${head}${to}.`;
  });
}

function sdExpectedTensors(unet: UNetConfig, vae: VaeConfig, textEncoder: ClipTextConfig): Map<string, number[]> {
  return new Map([...expectedUnetTensors(unet), ...expectedVaeTensors(vae), ...expectedClipTextTensors(textEncoder)]);
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new BadInputError(path, 'is missing', 'A diffusers folder needs a config.json in each component folder.');
    }
    throw e;
  }
  try {
    // Python's json writes NaN / Infinity / -Infinity (e.g. lambda_min_clipped in scheduler configs); read them as null.
    const v: unknown = JSON.parse(text.replace(/(?<=[:[,]\s*)-?(?:Infinity|NaN)(?=\s*[,\]}])/g, 'null'));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new BadInputError(path, `is not a valid JSON object (${(e as Error).message})`);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function openFolder(dir: string, opts: OpenOptions): Promise<Checkpoint> {
  const { kind } = await detectFolder(dir);
  if (kind.kind === 'sdxl') {
    throw new BadInputError(dir, 'is an SDXL pipeline folder; SDXL conversion is not supported', 'onestep converts SD 1.x and SD 2.x checkpoints.');
  }
  const componentNames = kind.kind === 'pixart-alpha' ? ['transformer', 'text_encoder', 'vae'] : ['unet', 'text_encoder', 'vae'];
  const rawConfigs: Record<string, Record<string, unknown>> = {};
  const parts: MappedSource[] = [];
  try {
    for (const c of componentNames) {
      const cdir = join(dir, c);
      if (!(await exists(cdir))) throw new BadInputError(dir, `has no ${c}/ folder`, 'The diffusers folder is incomplete.');
      rawConfigs[c] = await readJson(join(cdir, 'config.json'));
      const set = await TensorSet.open(cdir);
      // position_ids is an integer buffer older transformers versions saved; nothing reads it.
      parts.push(MappedSource.prefixed(set, `${c}.`, dir, (k) => !k.endsWith('position_ids'), c === 'vae' ? renameLegacyVaeAttention : undefined));
    }
    const weights = MappedSource.union(parts, dir);
    const notes: string[] = [];
    const schedulerPath = join(dir, 'scheduler', 'scheduler_config.json');
    let scheduler: SchedulerConfig;
    if (await exists(schedulerPath)) {
      rawConfigs.scheduler = await readJson(schedulerPath);
      scheduler = schedulerConfigFromJson(rawConfigs.scheduler, schedulerPath);
    } else {
      scheduler = sdScheduler();
      notes.push('no scheduler/scheduler_config.json: SD training schedule assumed');
    }
    if (opts.predictionType) scheduler = { ...scheduler, prediction_type: opts.predictionType };
    const tokenizerDir = (await exists(join(dir, 'tokenizer'))) ? join(dir, 'tokenizer') : undefined;
    const vae = vaeConfigFromJson(rawConfigs.vae);

    if (kind.kind === 'pixart-alpha') {
      checkTensors(weights, expectedVaeTensors(vae), dir);
      for (const required of ['transformer.pos_embed.proj.weight', 'text_encoder.shared.weight']) {
        if (!weights.has(required)) throw new BadInputError(dir, `required tensor ${required} is missing`);
      }
      return { path: dir, layout: 'diffusers', family: 'pixart-alpha', weights, vae, scheduler, rawConfigs, tokenizerDir, notes, unmappedKeys: [], metadata: {} };
    }

    const unsupported = unsupportedUnetFeatures(rawConfigs.unet);
    if (unsupported.length) {
      throw new BadInputError(join(dir, 'unet', 'config.json'), `uses UNet features onestep does not build: ${unsupported.join(', ')}`);
    }
    const unet = unetConfigFromJson(rawConfigs.unet);
    const textEncoder = clipTextConfigFromJson(rawConfigs.text_encoder);
    const family: Family = textEncoder.hidden_act === 'gelu' || unet.use_linear_projection ? 'sd2' : 'sd1';
    const expected = sdExpectedTensors(unet, vae, textEncoder);
    checkTensors(weights, expected, dir);
    const unmappedKeys = weights.names().filter((n) => !expected.has(n));
    return { path: dir, layout: 'diffusers', family, weights, unet, vae, textEncoder, scheduler, rawConfigs, tokenizerDir, notes, unmappedKeys, metadata: {} };
  } catch (e) {
    await Promise.all(parts.map((p) => p.close()));
    throw e;
  }
}
