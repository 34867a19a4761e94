/**
 * PixArt-α (YOSO-PixArt, PixArt-DMD; PixArt-Σ transformers of the same class): a DiT (PixArtTransformer2DModel)
 * conditioned on a T5 v1.1 XXL encoder through masked cross-attention, an AutoencoderKL. Published as diffusers
 * folders; the original PixArt repository's checkpoints (blocks.N.* keys) are not read.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { buildPixArtTransformerGraph, expectedPixArtTransformerWeights, normalizePixArtConfig, type PixArtConfig } from '../architectures/pixart-transformer.js';
import { buildT5EncoderGraph, expectedT5Weights, normalizeT5Config, t5EmbeddingOf, type T5Config } from '../architectures/t5-encoder.js';
import { buildVaeDecoderGraph, buildVaeEncoderGraph, expectedVaeWeights, vaeConfigFromJson, vaeScaleFactor } from '../architectures/vae.js';
import { checkTensors } from '../checkpoint/check-tensors.js';
import type { VaeConfig } from '../checkpoint/configs.js';
import { openPipelineFolder } from '../checkpoint/folder.js';
import type { WeightSource } from '../checkpoint/weight-source.js';
import { BadInputError, OnestepError } from '../errors.js';
import { T5Tokenizer } from '../runtime/t5-tokenizer.js';
import type { Checkpoint, FamilyDef, FolderInput, GraphSpec, InferenceDeclaration, OpenOptions } from './types.js';

const COMPONENTS = ['transformer', 'text_encoder', 'vae'];
/** max_sequence_length of PixArtAlphaPipeline (120) and PixArtSigmaPipeline (300). */
const MAX_LENGTH = { PixArtAlphaPipeline: 120, PixArtSigmaPipeline: 300 } as const;

interface PixArtConfigs {
  transformer: PixArtConfig;
  text_encoder: T5Config;
  vae: VaeConfig;
}

const configsOf = (ckpt: Checkpoint) => ckpt.configs as unknown as PixArtConfigs;

function maxLengthOf(ckpt: Checkpoint): number {
  return ckpt.pipelineIndex._class_name === 'PixArtSigmaPipeline' ? MAX_LENGTH.PixArtSigmaPipeline : MAX_LENGTH.PixArtAlphaPipeline;
}

/** A network config, or the config.json named in a BadInputError when onestep does not build that variant. */
function readConfig<T>(dir: string, component: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (e instanceof OnestepError && !(e instanceof BadInputError)) throw new BadInputError(path.join(dir, component, 'config.json'), e.message.replace(/^[^:]*: /, ''), e.hint);
    throw e;
  }
}

async function openPixArtFolder(folder: FolderInput, opts: OpenOptions): Promise<Checkpoint> {
  return openPipelineFolder(folder, COMPONENTS, ['tokenizer'], opts, ({ dir, weights, rawConfigs, tokenizerDirs, configFile }) => {
    const transformer = readConfig(dir, 'transformer', () => normalizePixArtConfig(rawConfigs.transformer));
    const textEncoder = readConfig(dir, 'text_encoder', () => normalizeT5Config(rawConfigs.text_encoder));
    const vae = vaeConfigFromJson(rawConfigs.vae, configFile('vae'));
    if (!tokenizerDirs.tokenizer) throw new BadInputError(dir, 'has no tokenizer/ folder', 'A PixArt folder needs its T5 tokenizer (tokenizer/spiece.model).');
    if (transformer.caption_channels !== textEncoder.d_model) {
      throw new BadInputError(dir, `the transformer reads ${transformer.caption_channels}-wide captions but the T5 encoder gives ${textEncoder.d_model}`, 'The transformer and text encoder do not belong together.');
    }
    const configs: PixArtConfigs = { transformer, text_encoder: textEncoder, vae };
    return { family: PIXART_ALPHA, configs: { ...configs }, unmappedKeys: checkWeights(weights, configs, dir) };
  });
}

/**
 * The folder's tensors against the ones its configs expect (checkTensors); returns the tensors no graph reads, which
 * inspect reports as unused.
 */
function checkWeights(weights: WeightSource, c: PixArtConfigs, dir: string): string[] {
  const { transformer, text_encoder, vae } = c;
  const expected = new Map([
    ...expectedT5Weights(text_encoder, t5EmbeddingOf(weights)),
    ...expectedPixArtTransformerWeights(transformer),
    ...expectedVaeWeights(vae),
  ]);
  checkTensors(weights, expected, dir);
  return weights.names().filter((n) => !expected.has(n) && !IGNORED.has(n));
}

/**
 * Tensors released folders carry that diffusers' PixArtTransformer2DModel does not use: the null-caption embedding of
 * the old CaptionProjection (classifier-free-guidance dropout during training; the pipeline encodes "" instead).
 */
const IGNORED = new Set(['transformer.caption_projection.y_embedding']);

function pixartGraphs(ckpt: Checkpoint): GraphSpec[] {
  const { transformer, text_encoder, vae } = configsOf(ckpt);
  return [
    { name: 'text_encoder', build: (w, dtype) => buildT5EncoderGraph(w, text_encoder, dtype, t5EmbeddingOf(ckpt.weights)) },
    { name: 'transformer', build: (w, dtype) => buildPixArtTransformerGraph(w, transformer, dtype) },
    { name: 'vae_decoder', build: (w, dtype) => buildVaeDecoderGraph(w, vae, dtype) },
    { name: 'vae_encoder', build: (w, dtype) => buildVaeEncoderGraph(w, vae, dtype) },
  ];
}

function pixartInference(ckpt: Checkpoint): InferenceDeclaration {
  const { transformer, vae } = configsOf(ckpt);
  const downscale = vaeScaleFactor(vae);
  const size = transformer.sample_size * downscale;
  const micro = transformer.use_additional_conditions ? ['resolution', 'aspect_ratio'] : [];
  return {
    conditioning: [
      {
        tokenizer: 'tokenizer',
        max_length: maxLengthOf(ckpt),
        graph: 'text_encoder.onnx',
        attention_mask: true,
        outputs: { last_hidden_state: 'encoder_hidden_states' },
        mask_to: 'encoder_attention_mask',
      },
    ],
    negative: 'encode',
    denoiser: { graph: 'transformer.onnx', inputs: ['sample', 'timestep', 'encoder_hidden_states', 'encoder_attention_mask', ...micro], out_channels: transformer.out_channels },
    latent: { channels: vae.latent_channels, scaling_factor: vae.scaling_factor, shift_factor: vae.shift_factor, downscale },
    default_size: { width: size, height: size },
  };
}

export const PIXART_ALPHA: FamilyDef = {
  id: 'pixart-alpha',
  label: 'PixArt-α',
  convertible: true,
  detectFolder: ({ pipelineClass, index }) =>
    /^PixArt(Alpha|Sigma)Pipeline$/.test(pipelineClass) || (Array.isArray(index.transformer) && index.transformer[1] === 'PixArtTransformer2DModel'),
  folderComponents: COMPONENTS,
  singleFilePrefixes: {},
  openFolder: openPixArtFolder,
  graphs: pixartGraphs,
  writeTokenizers: async (ckpt, dir) => {
    const out = path.join(dir, 'tokenizer');
    await mkdir(out);
    const tok = await T5Tokenizer.fromFolder(ckpt.tokenizerDirs.tokenizer, { maxLength: maxLengthOf(ckpt), preprocess: 'lower-strip' });
    await tok.save(out);
  },
  inference: pixartInference,
  lora: { components: ['transformer'], contextWidths: [] },
};
