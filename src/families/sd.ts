/**
 * Stable Diffusion 1.x and 2.x: a UNet2DConditionModel conditioned on one CLIP text encoder (OpenAI CLIP ViT-L for
 * 1.x, OpenCLIP ViT-H for 2.x, its penultimate layer), an AutoencoderKL. Single files are the CompVis / LDM layout
 * (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*); folders are diffusers pipelines.
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildClipTextGraph, clipTextConfigFromJson, clipTextConfigFromShapes, expectedClipTextWeights, SD_TEXT_OUTPUT } from '../architectures/clip-text.js';
import { buildUNetGraph, expectedUnetWeights, headsForHeadDim64, unetConfigFromJson, unetConfigFromShapes, type UnetShapeRules } from '../architectures/unet.js';
import { buildVaeDecoderGraph, buildVaeEncoderGraph, expectedVaeWeights, vaeConfigFromJson, vaeConfigFromShapes, vaeScaleFactor } from '../architectures/vae.js';
import { shapeView, type ClipTextConfig, type UNetConfig, type VaeConfig } from '../checkpoint/configs.js';
import { checkTensors } from '../checkpoint/check-tensors.js';
import { parseConfigOverrides, sdScheduler } from '../checkpoint/infer-config.js';
import { buildLdmKeyMap } from '../checkpoint/keymap-sd.js';
import { findConfigDir, openPipelineFolder, readConfigDir } from '../checkpoint/folder.js';
import { MappedSource } from '../checkpoint/sources.js';
import { BadInputError } from '../errors.js';
import { buildClipTokenizerJson, ClipTokenizer, clipTokenizerFromFolder } from '../runtime/tokenizer.js';
import type { Checkpoint, FamilyDef, FamilyId, FolderInput, GraphSpec, InferenceDeclaration, OpenOptions, SingleFileInput } from './types.js';

const ASSETS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'assets');
const COMPONENTS = ['unet', 'text_encoder', 'vae'];
const CLIP_MAX_LENGTH = 77;

/** Heads are not visible in shapes: SD 1.x uses 8 per attention (`attention_head_dim: 8`); SD 2.x head dim 64. */
export const SD1_UNET_RULES: UnetShapeRules = { headsFor: () => 8, crossAttentionDim: 768, linearProjection: false, sampleSize: 64 };
export const SD2_UNET_RULES: UnetShapeRules = { headsFor: headsForHeadDim64, crossAttentionDim: 1024, linearProjection: true, sampleSize: 64 };

/** SD 2.x: OpenCLIP's gelu text encoder, or a UNet with linear projections (SD 1.x uses 1x1 convs and quick_gelu). */
function isSd2(textEncoder: { hidden_act?: unknown } | undefined, unet: { use_linear_projection?: unknown } | undefined): boolean {
  return textEncoder?.hidden_act === 'gelu' || unet?.use_linear_projection === true;
}

const SD_PIPELINES = /^StableDiffusion(Img2Img|Inpaint)?Pipeline$/;

/**
 * A pipeline built from SD's components. Other pipelines of the same parts (InstaFlow's RectifiedFlowPipeline,
 * LatentConsistencyModelPipeline, community pipelines) convert the same way.
 */
function isSdPipeline({ index, pipelineClass }: FolderInput): boolean {
  if ('text_encoder_2' in index) return false;
  const componentClass = (name: string): unknown => (Array.isArray(index[name]) ? (index[name] as unknown[])[1] : undefined);
  if (componentClass('vae') === 'AutoencoderTiny') return false;
  const sdComponents = componentClass('unet') === 'UNet2DConditionModel' && componentClass('text_encoder') === 'CLIPTextModel' && componentClass('vae') === 'AutoencoderKL';
  return SD_PIPELINES.test(pipelineClass) || sdComponents || (pipelineClass === '' && 'unet' in index && 'text_encoder' in index);
}

function configs(ckpt: Checkpoint): { unet: UNetConfig; vae: VaeConfig; text_encoder: ClipTextConfig } {
  return ckpt.configs as { unet: UNetConfig; vae: VaeConfig; text_encoder: ClipTextConfig };
}

function expectedTensors(unet: UNetConfig, vae: VaeConfig, textEncoder: ClipTextConfig): Map<string, number[]> {
  return new Map([...expectedUnetWeights(unet), ...expectedVaeWeights(vae), ...expectedClipTextWeights(textEncoder)]);
}

async function openSdFolder(folder: FolderInput, opts: OpenOptions): Promise<Checkpoint> {
  return openPipelineFolder(folder, COMPONENTS, ['tokenizer'], opts, ({ dir, weights, rawConfigs, configFile }) => {
    const unet = unetConfigFromJson(rawConfigs.unet, configFile('unet'));
    const textEncoder = clipTextConfigFromJson(rawConfigs.text_encoder, configFile('text_encoder'));
    const vae = vaeConfigFromJson(rawConfigs.vae, configFile('vae'));
    const expected = expectedTensors(unet, vae, textEncoder);
    checkTensors(weights, expected, dir);
    return {
      family: isSd2(textEncoder, unet) ? SD2 : SD1,
      configs: { unet, vae, text_encoder: textEncoder },
      unmappedKeys: weights.names().filter((n) => !expected.has(n)),
    };
  });
}

async function openSdSingleFile(family: FamilyDef, file: SingleFileInput & { set: import('../safetensors/tensor-set.js').TensorSet }, opts: OpenOptions): Promise<Checkpoint> {
  const { set, keys } = file;
  const sd1 = family.id === 'sd1';
  const configDir = await findConfigDir(file.path, opts.configDir);
  const fromDir = configDir ? await readConfigDir(configDir, ['unet', 'vae', 'text_encoder']) : undefined;
  const fromMetadata = parseConfigOverrides(file.metadata, file.path);
  const overrides = fromDir || fromMetadata ? { ...fromMetadata, ...fromDir?.overrides } : undefined;
  const layers = overrides?.text_encoder?.num_hidden_layers;
  const map = buildLdmKeyMap([...keys], file.shapeOf, sd1 ? 'clip' : 'openclip', typeof layers === 'number' ? layers : undefined);
  const weights = new MappedSource(
    [...map.entries].map(([name, ref]) => [name, { set, ref }]),
    [set],
    file.path,
  );
  const view = shapeView(weights, file.path);
  let unet = unetConfigFromShapes(view, sd1 ? SD1_UNET_RULES : SD2_UNET_RULES);
  let vae = vaeConfigFromShapes(view);
  let textEncoder = clipTextConfigFromShapes(view, sd1 ? 'quick_gelu' : 'gelu');
  const notes = ['configs inferred from tensor shapes', ...map.notes];
  const towerLayers = textEncoder.num_hidden_layers;
  if (overrides) {
    const source = (c: string) => (fromDir?.overrides[c] ? path.join(configDir!, c, 'config.json') : `${file.path} (metadata "onestep.config".${c})`);
    if (overrides.unet) unet = unetConfigFromJson({ ...unet, ...overrides.unet }, source('unet'));
    if (overrides.vae) vae = vaeConfigFromJson({ ...vae, ...overrides.vae }, source('vae'));
    // A config's num_hidden_layers says which OpenCLIP layer SD 2.x conditions on (map.textLayer); the encoder
    // itself is the whole tower the file holds.
    if (overrides.text_encoder) {
      textEncoder = { ...clipTextConfigFromJson({ ...textEncoder, ...overrides.text_encoder }, source('text_encoder')), num_hidden_layers: towerLayers };
    }
    notes.push(
      configDir
        ? `configs from ${configDir} (${Object.keys(overrides).join(', ')}) override the ones inferred from shapes`
        : `configs from the file's metadata "onestep.config" (${Object.keys(overrides).join(', ')}) override the inferred ones`,
    );
  }
  if (overrides?.unet?.attention_head_dim === undefined && overrides?.unet?.num_attention_heads === undefined) {
    notes.push(
      sd1
        ? 'UNet attention heads: 8 per attention (SD 1.x rule; heads are not visible in shapes)'
        : `UNet attention heads: channels/64 per block = [${unet.attention_head_dim}] (SD 2.x rule; heads are not visible in shapes)`,
    );
  }
  if (overrides?.text_encoder?.num_attention_heads === undefined) {
    notes.push(`text encoder heads: hidden/64 = ${textEncoder.num_attention_heads} (heads are not visible in shapes)`);
  }
  const prediction = opts.predictionType ?? fromDir?.prediction;
  if (!sd1 && !prediction) {
    notes.push('SD 2.x single file: prediction type assumed epsilon; 768-v models need --prediction v_prediction');
  }
  checkTensors(weights, expectedTensors(unet, vae, textEncoder), file.path);
  return {
    path: file.path,
    layout: 'single-file',
    family,
    weights,
    configs: { unet, vae, text_encoder: textEncoder },
    scheduler: sdScheduler(prediction ?? 'epsilon'),
    rawConfigs: { unet: { ...unet }, vae: { ...vae }, text_encoder: { ...textEncoder } },
    textEncoderOutput: map.textLayer === undefined ? undefined : { ...SD_TEXT_OUTPUT, layer: map.textLayer },
    ldmLayout: map.layout,
    tokenizerDirs: fromDir?.tokenizerDirs ?? {},
    pipelineIndex: {},
    notes,
    unmappedKeys: map.unmapped,
    metadata: file.metadata,
  };
}

/**
 * The CLIP tokenizer of a checkpoint: its folder's, or (single files carry none) CLIP ViT-L/14's BPE vocabulary, which
 * SD 1.x and 2.x both use. OpenCLIP (SD 2.x) pads with "!" (id 0), OpenAI CLIP with <|endoftext|>, as the released
 * diffusers folders do.
 */
export async function clipTokenizerOf(dir: string | undefined, pad: '!' | '<|endoftext|>'): Promise<ClipTokenizer> {
  if (dir) {
    const files = await clipTokenizerFromFolder(dir);
    return ClipTokenizer.fromFiles(files.tokenizerJson, files.config);
  }
  const vocab: Record<string, number> = JSON.parse(await readFile(path.join(ASSETS, 'clip-vit-l-14', 'vocab.json'), 'utf8'));
  const merges = (await readFile(path.join(ASSETS, 'clip-vit-l-14', 'merges.txt'), 'utf8')).split('\n');
  const special = { bos: '<|startoftext|>', eos: '<|endoftext|>', pad, unk: '<|endoftext|>' };
  return ClipTokenizer.fromFiles(buildClipTokenizerJson(vocab, merges, special), {
    maxLength: CLIP_MAX_LENGTH,
    padToken: pad,
    padId: vocab[pad],
    bosId: vocab[special.bos],
    eosId: vocab[special.eos],
  });
}

function sdGraphs(ckpt: Checkpoint): GraphSpec[] {
  const { unet, vae, text_encoder } = configs(ckpt);
  return [
    { name: 'text_encoder', build: (w, dtype) => buildClipTextGraph(w, text_encoder, dtype, ckpt.textEncoderOutput) },
    { name: 'unet', build: (w, dtype) => buildUNetGraph(w, unet, dtype) },
    { name: 'vae_decoder', build: (w, dtype) => buildVaeDecoderGraph(w, vae, dtype) },
    { name: 'vae_encoder', build: (w, dtype) => buildVaeEncoderGraph(w, vae, dtype) },
  ];
}

function sdInference(ckpt: Checkpoint): InferenceDeclaration {
  const { unet, vae } = configs(ckpt);
  return clipUnetInference(unet, { channels: vae.latent_channels, scaling_factor: vae.scaling_factor, shift_factor: vae.shift_factor, downscale: vaeScaleFactor(vae) });
}

/** One CLIP text encoder into a UNet over `latent` (SD 1.x/2.x; SDXS with its own decoder). */
export function clipUnetInference(unet: UNetConfig, latent: InferenceDeclaration['latent']): InferenceDeclaration {
  const size = unet.sample_size * latent.downscale;
  return {
    conditioning: [
      { tokenizer: 'tokenizer', max_length: CLIP_MAX_LENGTH, graph: 'text_encoder.onnx', attention_mask: false, outputs: { last_hidden_state: 'encoder_hidden_states' } },
    ],
    negative: 'encode',
    denoiser: { graph: 'unet.onnx', inputs: ['sample', 'timestep', 'encoder_hidden_states'], out_channels: unet.out_channels },
    latent,
    default_size: { width: size, height: size },
  };
}

function sdFamily(id: Extract<FamilyId, 'sd1' | 'sd2'>): FamilyDef {
  const sd1 = id === 'sd1';
  const family: FamilyDef = {
    id,
    label: sd1 ? 'SD 1.x' : 'SD 2.x',
    convertible: true,
    detectSingleFile: (keys) =>
      keys.some((k) => k.startsWith('model.diffusion_model.')) && keys.some((k) => k.startsWith(sd1 ? 'cond_stage_model.transformer.' : 'cond_stage_model.model.')),
    detectFolder: (folder, cfgs) => isSdPipeline(folder) && (cfgs === undefined ? sd1 : isSd2(cfgs.text_encoder, cfgs.unet) !== sd1),
    folderComponents: COMPONENTS,
    singleFilePrefixes: { unet: ['model.diffusion_model.'], vae: ['first_stage_model.'], text_encoder: ['cond_stage_model.'] },
    openFolder: openSdFolder,
    openSingleFile: (file, opts) => openSdSingleFile(family, file, opts),
    graphs: sdGraphs,
    writeTokenizers: async (ckpt, dir) => {
      const out = path.join(dir, 'tokenizer');
      await mkdir(out);
      await (await clipTokenizerOf(ckpt.tokenizerDirs.tokenizer, sd1 ? '<|endoftext|>' : '!')).save(out);
    },
    inference: sdInference,
    lora: { components: ['unet', 'text_encoder'], contextWidths: [sd1 ? 768 : 1024] },
  };
  return family;
}

export const SD1 = sdFamily('sd1');
export const SD2 = sdFamily('sd2');
