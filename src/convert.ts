/**
 * `onestep convert`: a checkpoint (single file or diffusers folder) -> a model directory of ONNX graphs built from
 * the weights (runtime/model-dir.ts describes the result).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildClipTextGraph } from './architectures/clip-text.js';
import { buildTaesdDecoderGraph, openTaesd, taesdUpscale, type OpenedTaesd } from './architectures/taesd.js';
import { buildUNetGraph } from './architectures/unet.js';
import { buildVaeDecoderGraph, buildVaeEncoderGraph, vaeScaleFactor } from './architectures/vae.js';
import type { PredictionType } from './checkpoint/configs.js';
import { sha256Path } from './checkpoint/hash.js';
import { openCheckpoint, type Checkpoint } from './checkpoint/open.js';
import type { WeightSource } from './checkpoint/weight-source.js';
import { formatMergeReport, LoraMergedSource, type LoraSpec } from './lora/merge.js';
import { BadInputError } from './errors.js';
import { withAtomicDir } from './io/atomic.js';
import type { Graph } from './onnx/graph.js';
import { writeModel } from './onnx/write-model.js';
import { MODEL_FORMAT, MODEL_FORMAT_VERSION, type ModelManifest } from './runtime/model-dir.js';
import { detectRecipe, resolveRecipe } from './runtime/recipes.js';
import { buildClipTokenizerJson, ClipTokenizer, clipTokenizerFromFolder } from './runtime/tokenizer.js';

export const ONESTEP_VERSION = '0.1.0';
const ASSETS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'assets');

export type { LoraSpec };

export interface ConvertOptions {
  out: string;
  dtype?: 'float32' | 'float16';
  force?: boolean;
  prediction?: PredictionType;
  /** For a single file: a diffusers folder holding its configs (see OpenOptions.configDir). */
  configDir?: string;
  recipe?: string;
  /** Merged on read through the WeightSource (no merged checkpoint is written). */
  loras?: LoraSpec[];
  allowUnmatched?: boolean;
  /** A TAESD decoder (AutoencoderTiny folder or taesd_decoder.safetensors) written as vae_decoder.onnx instead of the VAE's. */
  taesd?: string;
  onProgress?: (p: ConvertProgress) => void;
}

export interface ConvertProgress {
  component: string;
  tensors: number;
  totalTensors: number;
  bytes: number;
}

export interface ConvertResult {
  out: string;
  manifest: ModelManifest;
  notes: string[];
  bytes: number;
  /** The LoRA merge report, when LoRAs were given. */
  loraReport?: string;
}

async function writeTokenizer(ckpt: Checkpoint, dir: string): Promise<number> {
  let tokenizer: ClipTokenizer;
  if (ckpt.tokenizerDir) {
    const files = await clipTokenizerFromFolder(ckpt.tokenizerDir);
    tokenizer = ClipTokenizer.fromFiles(files.tokenizerJson, files.config);
  } else {
    // Single files carry no tokenizer: SD 1.x and 2.x both use CLIP ViT-L/14's BPE vocabulary. OpenCLIP (SD 2.x)
    // pads with "!" (id 0), OpenAI CLIP (SD 1.x) with <|endoftext|>, as the released diffusers folders do.
    const vocab: Record<string, number> = JSON.parse(await readFile(path.join(ASSETS, 'clip-vit-l-14', 'vocab.json'), 'utf8'));
    const merges = (await readFile(path.join(ASSETS, 'clip-vit-l-14', 'merges.txt'), 'utf8')).split('\n');
    const pad = ckpt.family === 'sd2' ? '!' : '<|endoftext|>';
    const special = { bos: '<|startoftext|>', eos: '<|endoftext|>', pad, unk: '<|endoftext|>' };
    tokenizer = ClipTokenizer.fromFiles(buildClipTokenizerJson(vocab, merges, special), {
      maxLength: 77,
      padToken: pad,
      padId: vocab[pad],
      bosId: vocab[special.bos],
      eosId: vocab[special.eos],
    });
  }
  await tokenizer.save(dir);
  return 77;
}

export async function convertCheckpoint(input: string, opts: ConvertOptions): Promise<ConvertResult> {
  const dtype = opts.dtype ?? 'float32';
  const ckpt = await openCheckpoint(input, { predictionType: opts.prediction, configDir: opts.configDir });
  let weights: WeightSource = ckpt.weights;
  let taesd: OpenedTaesd | undefined;
  try {
    if (ckpt.family !== 'sd1' && ckpt.family !== 'sd2') {
      throw new BadInputError(input, `is a ${ckpt.family} checkpoint; these cannot be converted yet`, 'onestep converts Stable Diffusion 1.x and 2.x checkpoints.');
    }
    if (!ckpt.unet || !ckpt.textEncoder) {
      throw new BadInputError(input, 'lacks a UNet or a text encoder', 'Pass a complete checkpoint (UNet, VAE and text encoder) or a diffusers folder.');
    }
    const hashPromise = sha256Path(input);
    hashPromise.catch(() => undefined);
    const loraSpecs = opts.loras ?? [];
    let loraReport: string | undefined;
    if (loraSpecs.length) {
      const merged = await LoraMergedSource.create(ckpt.weights, loraSpecs, { allowUnmatched: opts.allowUnmatched, baseFamily: ckpt.family, baseLabel: input });
      weights = merged;
      loraReport = formatMergeReport(merged.report);
    }
    const loras = await Promise.all(loraSpecs.map(async (l) => ({ name: path.basename(l.path), sha256: await sha256Path(l.path), scale: l.scale })));
    // Before any graph is built: a recipe that does not fit the family must not cost a whole conversion.
    const recipe = resolveRecipe({
      family: ckpt.family,
      explicit: opts.recipe,
      detected: detectRecipe([path.basename(path.resolve(input))], ckpt.metadata),
      schedulerPrediction: ckpt.scheduler.prediction_type,
      predictionFlag: opts.prediction,
    });
    if (opts.taesd) {
      taesd = await openTaesd(opts.taesd);
      const { latent_channels } = taesd.config;
      const downscale = vaeScaleFactor(ckpt.vae);
      if (latent_channels !== ckpt.vae.latent_channels || taesdUpscale(taesd.config) !== downscale) {
        throw new BadInputError(
          opts.taesd,
          `TAESD decodes ${latent_channels}-channel latents ${taesdUpscale(taesd.config)}x, but ${input} has ${ckpt.vae.latent_channels}-channel latents at ${downscale}x`,
          'Use the TAESD made for this model family (taesd for SD 1.x/2.x).',
        );
      }
    }
    const taesdDecoder = taesd;
    const unetCfg = ckpt.unet;
    const textCfg = ckpt.textEncoder;
    const graphs: [string, () => Graph][] = [
      ['text_encoder', () => buildClipTextGraph(weights, textCfg, dtype, ckpt.textEncoderOutput)],
      ['unet', () => buildUNetGraph(weights, unetCfg, dtype)],
      [
        'vae_decoder',
        () =>
          taesdDecoder
            ? buildTaesdDecoderGraph(taesdDecoder.weights, taesdDecoder.config, dtype, { latentScale: ckpt.vae.scaling_factor, latentShift: ckpt.vae.shift_factor })
            : buildVaeDecoderGraph(weights, ckpt.vae, dtype),
      ],
      ['vae_encoder', () => buildVaeEncoderGraph(weights, ckpt.vae, dtype)],
    ];
    let bytes = 0;
    let manifest!: ModelManifest;
    await withAtomicDir(
      opts.out,
      async (tmp) => {
        for (const [name, build] of graphs) {
          const graph = build();
          const { dataBytes } = await writeModel(graph, tmp, name, (p) => opts.onProgress?.({ component: name, ...p }));
          bytes += dataBytes;
        }
        const tokenizerDir = path.join(tmp, 'tokenizer');
        await mkdir(tokenizerDir);
        const maxLength = await writeTokenizer(ckpt, tokenizerDir);
        const sampleSize = unetCfg.sample_size * 8;
        manifest = {
          format: MODEL_FORMAT,
          version: MODEL_FORMAT_VERSION,
          family: ckpt.family as 'sd1' | 'sd2',
          dtype,
          source: { name: path.basename(path.resolve(input)), layout: ckpt.layout, sha256: await hashPromise, loras },
          components: { text_encoder: 'text_encoder.onnx', unet: 'unet.onnx', vae_decoder: 'vae_decoder.onnx', vae_encoder: 'vae_encoder.onnx' },
          configs: { unet: unetCfg, vae: ckpt.vae, text_encoder: textCfg, scheduler: ckpt.scheduler },
          recipe,
          latent: {
            channels: ckpt.vae.latent_channels,
            scaling_factor: ckpt.vae.scaling_factor,
            shift_factor: ckpt.vae.shift_factor,
            downscale: vaeScaleFactor(ckpt.vae),
          },
          default_size: { width: sampleSize, height: sampleSize },
          tokenizer: { dir: 'tokenizer', max_length: maxLength },
          converter: { name: 'onestep', version: ONESTEP_VERSION },
          vae_decoder: taesd ? 'taesd' : 'autoencoder-kl',
        };
        await writeFile(path.join(tmp, 'model.json'), JSON.stringify(manifest, null, 2) + '\n');
      },
      { force: !!opts.force },
    );
    return { out: opts.out, manifest, notes: ckpt.notes, bytes, loraReport };
  } finally {
    await Promise.all([weights.close(), taesd?.weights.close()]);
  }
}
