/**
 * Stable Diffusion XL (SDXL-Turbo, DMD2, Hyper-SDXL, SDXL-Lightning, NitroFusion): a three-level UNet with added
 * text-time conditioning, two text encoders (CLIP ViT-L and OpenCLIP bigG with projection), an AutoencoderKL.
 * Single files are the SGM / A1111 layout (conditioner.embedders.N.*, model.diffusion_model.label_emb.*).
 *
 * Conditioning, as StableDiffusionXLPipeline.encode_prompt computes it: both encoders' hidden_states[-2] (no final
 * norm) concatenated on the feature axis -> encoder_hidden_states; encoder 2's final-norm EOS row times its
 * text_projection -> text_embeds; time_ids = [orig_h, orig_w, crop_top, crop_left, target_h, target_w] (the runtime
 * fills them). tokenizer_2 pads with "!" (id 0). With force_zeros_for_empty_prompt (SDXL's default) the unguided half
 * of CFG is zeros when no negative prompt is given at all; an explicit "" is encoded.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { buildClipTextGraph, clipTextConfigFromJson, clipTextConfigFromShapes, expectedClipTextWeights, SDXL_TEXT2_OUTPUT, SDXL_TEXT_OUTPUT } from '../architectures/clip-text.js';
import { buildUNetGraph, expectedUnetWeights, headsForHeadDim64, unetConfigFromJson, unetConfigFromShapes, type UnetShapeRules } from '../architectures/unet.js';
import { buildVaeDecoderGraph, buildVaeEncoderGraph, expectedVaeWeights, vaeConfigFromJson, vaeConfigFromShapes, vaeScaleFactor } from '../architectures/vae.js';
import { shapeView, type ClipTextConfig, type UNetConfig, type VaeConfig } from '../checkpoint/configs.js';
import { checkTensors } from '../checkpoint/check-tensors.js';
import { findConfigDir, openPipelineFolder, readConfigDir } from '../checkpoint/folder.js';
import { sdScheduler } from '../checkpoint/infer-config.js';
import { buildLdmKeyMap } from '../checkpoint/keymap-sd.js';
import { MappedSource } from '../checkpoint/sources.js';
import { BadInputError } from '../errors.js';
import type { TensorSet } from '../safetensors/tensor-set.js';
import { clipTokenizerOf } from './sd.js';
import type { Checkpoint, FamilyDef, FolderInput, GraphSpec, InferenceDeclaration, OpenOptions, SingleFileInput } from './types.js';

const COMPONENTS = ['unet', 'text_encoder', 'text_encoder_2', 'vae'];
const CLIP_MAX_LENGTH = 77;
/** SDXL's VAE latent scale (SD 1.x/2.x: 0.18215); single files do not record it. */
const SDXL_VAE_SCALE = 0.13025;

/** Not visible in shapes: SDXL's head dim is 64 ([5, 10, 20] heads for 320/640/1280 channels); 128x128 latents. */
export const SDXL_UNET_RULES: UnetShapeRules = { headsFor: headsForHeadDim64, crossAttentionDim: 2048, linearProjection: true, sampleSize: 128 };

interface SdxlConfigs {
  unet: UNetConfig;
  vae: VaeConfig;
  text_encoder: ClipTextConfig;
  text_encoder_2: ClipTextConfig;
}

function configs(ckpt: Checkpoint): SdxlConfigs {
  return ckpt.configs as unknown as SdxlConfigs;
}

function expectedTensors(c: SdxlConfigs): Map<string, number[]> {
  return new Map([
    ...expectedUnetWeights(c.unet),
    ...expectedVaeWeights(c.vae),
    ...expectedClipTextWeights(c.text_encoder),
    ...expectedClipTextWeights(c.text_encoder_2, 'text_encoder_2'),
  ]);
}

/** SDXL's UNet must carry the added text-time conditioning the two encoders feed. */
function checkUnet(unet: UNetConfig, text2: ClipTextConfig, file: string): void {
  if (unet.addition_embed_type !== 'text_time') {
    throw new BadInputError(file, 'has an SDXL pipeline layout but its UNet has no text_time added conditioning', 'Check that the UNet is an SDXL UNet.');
  }
  const pooled = unet.projection_class_embeddings_input_dim! - 6 * unet.addition_time_embed_dim!;
  if (text2.projection_dim !== pooled) {
    throw new BadInputError(file, `text_encoder_2 projects to ${text2.projection_dim}, but the UNet's added embedding expects ${pooled} pooled values`);
  }
}

async function openSdxlFolder(folder: FolderInput, opts: OpenOptions): Promise<Checkpoint> {
  return openPipelineFolder(folder, COMPONENTS, ['tokenizer', 'tokenizer_2'], opts, ({ dir, weights, rawConfigs, configFile }) => {
    const c: SdxlConfigs = {
      unet: unetConfigFromJson(rawConfigs.unet, configFile('unet')),
      vae: vaeConfigFromJson(rawConfigs.vae, configFile('vae')),
      text_encoder: clipTextConfigFromJson(rawConfigs.text_encoder, configFile('text_encoder')),
      text_encoder_2: clipTextConfigFromJson(rawConfigs.text_encoder_2, configFile('text_encoder_2')),
    };
    checkUnet(c.unet, c.text_encoder_2, dir);
    const expected = expectedTensors(c);
    checkTensors(weights, expected, dir);
    return { family: SDXL, configs: { ...c }, unmappedKeys: weights.names().filter((n) => !expected.has(n)) };
  });
}

async function openSdxlSingleFile(file: SingleFileInput & { set: TensorSet }, opts: OpenOptions): Promise<Checkpoint> {
  const { set, keys } = file;
  const configDir = await findConfigDir(file.path, opts.configDir);
  const fromDir = configDir ? await readConfigDir(configDir, COMPONENTS) : undefined;
  const map = buildLdmKeyMap([...keys], file.shapeOf, 'sgm');
  const weights = new MappedSource(
    [...map.entries].map(([name, ref]) => [name, { set, ref }]),
    [set],
    file.path,
  );
  const view = shapeView(weights, file.path);
  const projection = view.metaOf('text_encoder_2.text_projection.weight');
  if (!projection) {
    throw new BadInputError(file.path, 'is an SDXL (SGM layout) checkpoint without OpenCLIP bigG\'s text_projection (conditioner.embedders.1.model.text_projection)', 'The SDXL checkpoint is incomplete.');
  }
  const c: SdxlConfigs = {
    unet: unetConfigFromShapes(view, SDXL_UNET_RULES, projection.shape[0]),
    vae: { ...vaeConfigFromShapes(view), scaling_factor: SDXL_VAE_SCALE },
    text_encoder: clipTextConfigFromShapes(view, 'quick_gelu'),
    text_encoder_2: { ...clipTextConfigFromShapes(view, 'gelu', 'text_encoder_2'), projection_dim: projection.shape[0] },
  };
  const notes = ['configs inferred from tensor shapes', ...map.notes];
  const overrides = fromDir?.overrides ?? {};
  const configFile = (component: string) => path.join(configDir!, component, 'config.json');
  if (overrides.unet) c.unet = unetConfigFromJson({ ...c.unet, ...overrides.unet }, configFile('unet'));
  if (overrides.vae) c.vae = vaeConfigFromJson({ ...c.vae, ...overrides.vae }, configFile('vae'));
  // The projections' widths are the file's (its text_projection), whatever the config's architectures say.
  for (const te of ['text_encoder', 'text_encoder_2'] as const) {
    if (overrides[te]) c[te] = { ...clipTextConfigFromJson({ ...c[te], ...overrides[te] }, configFile(te)), projection_dim: c[te].projection_dim };
  }
  if (Object.keys(overrides).length) notes.push(`configs from ${configDir} (${Object.keys(overrides).join(', ')}) override the ones inferred from shapes`);
  else {
    notes.push(`UNet attention heads: channels/64 per block = [${c.unet.attention_head_dim}] (SDXL rule; heads are not visible in shapes)`);
    notes.push(`text encoder heads: hidden/64 = ${c.text_encoder.num_attention_heads} and ${c.text_encoder_2.num_attention_heads} (heads are not visible in shapes)`);
  }
  checkUnet(c.unet, c.text_encoder_2, file.path);
  checkTensors(weights, expectedTensors(c), file.path);
  return {
    path: file.path,
    layout: 'single-file',
    family: SDXL,
    weights,
    configs: { ...c },
    scheduler: sdScheduler(opts.predictionType ?? fromDir?.prediction ?? 'epsilon'),
    rawConfigs: { unet: { ...c.unet }, vae: { ...c.vae }, text_encoder: { ...c.text_encoder }, text_encoder_2: { ...c.text_encoder_2 } },
    ldmLayout: map.layout,
    tokenizerDirs: fromDir?.tokenizerDirs ?? {},
    pipelineIndex: {},
    notes,
    unmappedKeys: map.unmapped,
    metadata: file.metadata,
  };
}

function sdxlGraphs(ckpt: Checkpoint): GraphSpec[] {
  const c = configs(ckpt);
  return [
    { name: 'text_encoder', build: (w, dtype) => buildClipTextGraph(w, c.text_encoder, dtype, SDXL_TEXT_OUTPUT) },
    { name: 'text_encoder_2', build: (w, dtype) => buildClipTextGraph(w, c.text_encoder_2, dtype, SDXL_TEXT2_OUTPUT, 'text_encoder_2') },
    { name: 'unet', build: (w, dtype) => buildUNetGraph(w, c.unet, dtype) },
    { name: 'vae_decoder', build: (w, dtype) => buildVaeDecoderGraph(w, c.vae, dtype) },
    { name: 'vae_encoder', build: (w, dtype) => buildVaeEncoderGraph(w, c.vae, dtype) },
  ];
}

function sdxlInference(ckpt: Checkpoint): InferenceDeclaration {
  const { unet, vae } = configs(ckpt);
  const downscale = vaeScaleFactor(vae);
  const size = unet.sample_size * downscale;
  // diffusers' StableDiffusionXLPipeline defaults force_zeros_for_empty_prompt to true (single files too).
  const forceZeros = ckpt.pipelineIndex.force_zeros_for_empty_prompt !== false;
  return {
    conditioning: [
      { tokenizer: 'tokenizer', max_length: CLIP_MAX_LENGTH, graph: 'text_encoder.onnx', attention_mask: false, outputs: { hidden_states: 'encoder_hidden_states' } },
      {
        tokenizer: 'tokenizer_2',
        max_length: CLIP_MAX_LENGTH,
        graph: 'text_encoder_2.onnx',
        attention_mask: false,
        outputs: { hidden_states: 'encoder_hidden_states', text_embeds: 'text_embeds' },
      },
    ],
    negative: forceZeros ? 'zeros-when-absent' : 'encode',
    denoiser: { graph: 'unet.onnx', inputs: ['sample', 'timestep', 'encoder_hidden_states', 'text_embeds', 'time_ids'], out_channels: unet.out_channels },
    latent: { channels: vae.latent_channels, scaling_factor: vae.scaling_factor, shift_factor: vae.shift_factor, downscale },
    default_size: { width: size, height: size },
  };
}

export const SDXL: FamilyDef = {
  id: 'sdxl',
  label: 'SDXL',
  convertible: true,
  detectSingleFile: (keys) => keys.some((k) => k.startsWith('conditioner.embedders.') || k.startsWith('model.diffusion_model.label_emb.')),
  detectFolder: ({ index, pipelineClass }) => /^StableDiffusionXL/.test(pipelineClass) || 'text_encoder_2' in index,
  folderComponents: COMPONENTS,
  singleFilePrefixes: {
    unet: ['model.diffusion_model.'],
    vae: ['first_stage_model.'],
    text_encoder: ['conditioner.embedders.0.'],
    text_encoder_2: ['conditioner.embedders.1.'],
  },
  openFolder: openSdxlFolder,
  openSingleFile: openSdxlSingleFile,
  graphs: sdxlGraphs,
  writeTokenizers: async (ckpt, dir) => {
    // SDXL ships both as CLIP ViT-L's BPE: tokenizer/ pads with <|endoftext|>, tokenizer_2/ (OpenCLIP's) with "!".
    for (const [name, pad] of [
      ['tokenizer', '<|endoftext|>'],
      ['tokenizer_2', '!'],
    ] as const) {
      const out = path.join(dir, name);
      await mkdir(out);
      await (await clipTokenizerOf(ckpt.tokenizerDirs[name], pad)).save(out);
    }
  },
  inference: sdxlInference,
  lora: { components: ['unet', 'text_encoder', 'text_encoder_2'], contextWidths: [2048] },
};
