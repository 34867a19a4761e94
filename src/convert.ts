/**
 * `onestep convert`: a checkpoint (single file or diffusers folder) -> a model directory of ONNX graphs built from
 * the weights (runtime/model-dir.ts describes the result).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildTaesdDecoderGraph, taesdUpscale } from './architectures/taesd.js';
import { openTaesd, type OpenedTaesd } from './checkpoint/taesd.js';
import type { PredictionType } from './checkpoint/configs.js';
import { sha256Path } from './checkpoint/hash.js';
import { openCheckpoint } from './checkpoint/open.js';
import { convertibleLabels } from './families/index.js';
import type { WeightSource } from './checkpoint/weight-source.js';
import { formatMergeReport, LoraMergedSource, type LoraSpec } from './lora/merge.js';
import { BadInputError } from './errors.js';
import { withAtomicDir } from './io/atomic.js';
import type { Graph } from './onnx/graph.js';
import { fuseForCuda } from './onnx/cuda-fusions.js';
import { writeModel } from './onnx/write-model.js';
import { MODEL_FORMAT, MODEL_FORMAT_VERSION, type ModelManifest } from './runtime/model-dir.js';
import { detectRecipe, resolveRecipe } from './runtime/recipes.js';

export const ONESTEP_VERSION = '0.1.0';

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
  /**
   * 'cuda': the UNet and VAE graphs use ONNX Runtime's CUDA-only fused ops (onnx/cuda-fusions.ts), in float16 unless
   * `dtype` says otherwise. Default 'cpu': standard ops that run everywhere.
   */
  target?: 'cpu' | 'cuda';
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

export async function convertCheckpoint(input: string, opts: ConvertOptions): Promise<ConvertResult> {
  const target = opts.target ?? 'cpu';
  const dtype = opts.dtype ?? (target === 'cuda' ? 'float16' : 'float32');
  const forTarget = (g: Graph): Graph => {
    if (target === 'cuda') fuseForCuda(g);
    return g;
  };
  const ckpt = await openCheckpoint(input, { predictionType: opts.prediction, configDir: opts.configDir });
  let weights: WeightSource = ckpt.weights;
  let taesd: OpenedTaesd | undefined;
  try {
    const { family } = ckpt;
    if (!family.graphs || !family.inference || !family.writeTokenizers) {
      throw new BadInputError(input, `is a ${family.label}-family checkpoint, which onestep recognises but cannot convert yet`, `onestep converts ${convertibleLabels()} checkpoints.`);
    }
    const hashPromise = sha256Path(input);
    hashPromise.catch(() => undefined);
    const loraSpecs = opts.loras ?? [];
    let loraReport: string | undefined;
    if (loraSpecs.length) {
      const merged = await LoraMergedSource.create(ckpt.weights, loraSpecs, { allowUnmatched: opts.allowUnmatched, baseFamily: family.id, baseLabel: input });
      weights = merged;
      loraReport = formatMergeReport(merged.report);
    }
    const loras = await Promise.all(loraSpecs.map(async (l) => ({ name: path.basename(l.path), sha256: await sha256Path(l.path), scale: l.scale })));
    // Before any graph is built: a recipe that does not fit the family must not cost a whole conversion.
    const recipe = resolveRecipe({
      family: family.id,
      explicit: opts.recipe,
      detected: detectRecipe([path.basename(path.resolve(input))], ckpt.metadata),
      schedulerPrediction: ckpt.scheduler.prediction_type,
      predictionFlag: opts.prediction,
    });
    const inference = family.inference(ckpt);
    const { latent } = inference;
    if (opts.taesd) {
      taesd = await openTaesd(opts.taesd);
      const { latent_channels } = taesd.config;
      if (latent_channels !== latent.channels || taesdUpscale(taesd.config) !== latent.downscale) {
        throw new BadInputError(
          opts.taesd,
          `TAESD decodes ${latent_channels}-channel latents ${taesdUpscale(taesd.config)}x, but ${input} has ${latent.channels}-channel latents at ${latent.downscale}x`,
          'Use the TAESD made for this model family (taesd for SD 1.x/2.x).',
        );
      }
    }
    const taesdDecoder = taesd;
    // The CUDA target rewrites the denoiser and the VAE graphs; text encoders keep standard ops (no fusions apply).
    const fused = new Set(['unet', 'vae_decoder', 'vae_encoder']);
    const graphs = family.graphs(ckpt).map((spec): [string, () => Graph] => {
      const build =
        spec.name === 'vae_decoder' && taesdDecoder
          ? () => buildTaesdDecoderGraph(taesdDecoder.weights, taesdDecoder.config, dtype, { latentScale: latent.scaling_factor, latentShift: latent.shift_factor })
          : () => spec.build(weights, dtype);
      return [spec.name, fused.has(spec.name) ? () => forTarget(build()) : build];
    });
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
        await family.writeTokenizers!(ckpt, tmp);
        const names = new Set(graphs.map(([name]) => name));
        const decoderKind = (name: string) => (name === 'vae_decoder' && (taesd || inference.decoder === 'taesd') ? 'taesd' : 'autoencoder-kl');
        manifest = {
          format: MODEL_FORMAT,
          version: MODEL_FORMAT_VERSION,
          family: family.id,
          dtype,
          source: { name: path.basename(path.resolve(input)), layout: ckpt.layout, sha256: await hashPromise, loras },
          conditioning: inference.conditioning,
          negative: inference.negative,
          denoiser: inference.denoiser,
          decoder: { graph: 'vae_decoder.onnx', kind: decoderKind('vae_decoder') },
          ...(names.has('vae_encoder') ? { encoder: { graph: 'vae_encoder.onnx', kind: 'autoencoder-kl' as const } } : {}),
          configs: { ...ckpt.configs, scheduler: ckpt.scheduler },
          recipe,
          latent,
          default_size: inference.default_size,
          converter: { name: 'onestep', version: ONESTEP_VERSION },
          ...(target === 'cuda' ? { target } : {}),
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
