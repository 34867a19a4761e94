/**
 * SDXS (SDXS-512-DreamShaper, SDXS-512-0.9): an SD-based three-level UNet without a mid block, one CLIP text encoder
 * (last_hidden_state, as SD), and a `vae/` that is an AutoencoderTiny (TAESD) used as the main decoder: scaling factor
 * 1.0, decode(z) = 2·layers(3·tanh(z/3)) − 1 (architectures/taesd.ts). Published as diffusers folders only.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { buildClipTextGraph, clipTextConfigFromJson, expectedClipTextWeights } from '../architectures/clip-text.js';
import {
  buildTaesdDecoderGraph,
  buildTaesdEncoderGraph,
  expectedTaesdEncoderWeights,
  inferTaesdDecoderConfig,
  normalizeTaesdConfig,
  normalizeTaesdEncoderConfig,
  taesdDownscale,
  taesdUpscale,
  type TaesdDecoderConfig,
  type TaesdEncoderConfig,
} from '../architectures/taesd.js';
import { buildUNetGraph, expectedUnetWeights, unetConfigFromJson } from '../architectures/unet.js';
import type { ClipTextConfig, UNetConfig } from '../checkpoint/configs.js';
import { checkTensors } from '../checkpoint/check-tensors.js';
import { openPipelineFolder } from '../checkpoint/folder.js';
import { BadInputError } from '../errors.js';
import { clipTokenizerOf, clipUnetInference } from './sd.js';
import type { Checkpoint, FamilyDef, FolderInput, GraphSpec, InferenceDeclaration, OpenOptions } from './types.js';

const COMPONENTS = ['unet', 'text_encoder', 'vae'];
/** Where the AutoencoderTiny's decoder and encoder sit among the folder's canonical names. */
const DECODER_PREFIX = 'vae.decoder';
const ENCODER_PREFIX = 'vae.encoder';

interface SdxsConfigs {
  unet: UNetConfig;
  text_encoder: ClipTextConfig;
  /**
   * The AutoencoderTiny decoder, plus its latent scale (AutoencoderTiny's scaling_factor, 1.0 in SDXS) and its encoder
   * where the folder has one (image-to-image).
   */
  vae: TaesdDecoderConfig & { scaling_factor: number; encoder?: TaesdEncoderConfig };
}

function configs(ckpt: Checkpoint): SdxsConfigs {
  return ckpt.configs as unknown as SdxsConfigs;
}

async function openSdxsFolder(folder: FolderInput, opts: OpenOptions): Promise<Checkpoint> {
  return openPipelineFolder(folder, COMPONENTS, ['tokenizer'], opts, ({ dir, weights, rawConfigs, notes, configFile }) => {
    const unet = unetConfigFromJson(rawConfigs.unet, configFile('unet'));
    const textEncoder = clipTextConfigFromJson(rawConfigs.text_encoder, configFile('text_encoder'));
    const vaeFile = configFile('vae');
    const decoder = normalizeTaesdConfig(rawConfigs.vae, vaeFile);
    const inferred = inferTaesdDecoderConfig(weights, path.join(dir, 'vae'), DECODER_PREFIX);
    for (const k of ['latent_channels', 'out_channels', 'num_decoder_blocks'] as const) {
      if (JSON.stringify(decoder[k]) !== JSON.stringify(inferred[k])) {
        throw new BadInputError(vaeFile, `says ${k} ${JSON.stringify(decoder[k])}, but the weights in ${path.join(dir, 'vae')} have ${JSON.stringify(inferred[k])}`);
      }
    }
    const scale = rawConfigs.vae.scaling_factor;
    // Decoder-only AutoencoderTiny folders exist (madebyollin's files are split): without an encoder, no image-to-image.
    const encoder = weights.names().some((n) => n.startsWith(`${ENCODER_PREFIX}.`)) ? normalizeTaesdEncoderConfig(rawConfigs.vae, vaeFile) : undefined;
    if (encoder && (encoder.latent_channels !== decoder.latent_channels || taesdDownscale(encoder) !== taesdUpscale(decoder))) {
      throw new BadInputError(vaeFile, `describes an encoder (${encoder.latent_channels} latent channels, ${taesdDownscale(encoder)}x) that does not match its decoder (${decoder.latent_channels}, ${taesdUpscale(decoder)}x)`);
    }
    const vae = { ...decoder, scaling_factor: typeof scale === 'number' ? scale : 1, ...(encoder ? { encoder } : {}) };
    const expected = new Map([...expectedUnetWeights(unet), ...expectedClipTextWeights(textEncoder), ...(encoder ? expectedTaesdEncoderWeights(encoder, ENCODER_PREFIX) : [])]);
    checkTensors(weights, expected, dir);
    notes.push(
      encoder
        ? 'vae/ is an AutoencoderTiny: its decoder and encoder are the model\'s (image-to-image encodes with TAESD)'
        : 'vae/ is an AutoencoderTiny without encoder weights: converted as the decoder only (no image-to-image)',
    );
    return {
      family: SDXS,
      // vae: the AutoencoderTiny's decoder config (CheckpointConfigs types vae as an AutoencoderKL's).
      configs: { unet, text_encoder: textEncoder, vae } as unknown as Checkpoint['configs'],
      // The AutoencoderTiny (decoder read by its graph, encoder not used) is known, not unmapped.
      unmappedKeys: weights.names().filter((n) => !expected.has(n) && !n.startsWith('vae.')),
    };
  });
}

function sdxsGraphs(ckpt: Checkpoint): GraphSpec[] {
  const { unet, text_encoder, vae } = configs(ckpt);
  return [
    { name: 'text_encoder', build: (w, dtype) => buildClipTextGraph(w, text_encoder, dtype) },
    { name: 'unet', build: (w, dtype) => buildUNetGraph(w, unet, dtype) },
    { name: 'vae_decoder', build: (w, dtype) => buildTaesdDecoderGraph(w, vae, dtype, { latentScale: vae.scaling_factor, prefix: DECODER_PREFIX }) },
    ...(vae.encoder ? [{ name: 'vae_encoder', build: (w, dtype) => buildTaesdEncoderGraph(w, vae.encoder!, dtype, ENCODER_PREFIX) } satisfies GraphSpec] : []),
  ];
}

function sdxsInference(ckpt: Checkpoint): InferenceDeclaration {
  const { unet, vae } = configs(ckpt);
  const latent = { channels: vae.latent_channels, scaling_factor: vae.scaling_factor, shift_factor: null, downscale: taesdUpscale(vae) };
  return { ...clipUnetInference(unet, latent), decoder: 'taesd', ...(vae.encoder ? { encoder: 'taesd' as const } : {}) };
}

export const SDXS: FamilyDef = {
  id: 'sdxs',
  label: 'SDXS',
  convertible: true,
  detectFolder: ({ index }) => Array.isArray(index.vae) && index.vae[1] === 'AutoencoderTiny' && 'unet' in index && !('text_encoder_2' in index),
  folderComponents: COMPONENTS,
  singleFilePrefixes: {},
  openFolder: openSdxsFolder,
  graphs: sdxsGraphs,
  writeTokenizers: async (ckpt, dir) => {
    const out = path.join(dir, 'tokenizer');
    await mkdir(out);
    await (await clipTokenizerOf(ckpt.tokenizerDirs.tokenizer, '<|endoftext|>')).save(out);
  },
  inference: sdxsInference,
  lora: { components: ['unet', 'text_encoder'], contextWidths: [] },
};
