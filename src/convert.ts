/**
 * `onestep convert`: a checkpoint (single file or diffusers folder) -> a model directory of ONNX graphs built from
 * the weights (runtime/model-dir.ts describes the result).
 */
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildTaesdDecoderGraph, taesdUpscale } from './architectures/taesd.js';
import { openTaesd, type OpenedTaesd } from './checkpoint/taesd.js';
import { checkConfigs } from './checkpoint/check-config.js';
import type { PredictionType } from './checkpoint/configs.js';
import { sha256Path } from './checkpoint/hash.js';
import { withReplacedComponents, type ReplacedComponent } from './checkpoint/components.js';
import { openCheckpoint } from './checkpoint/open.js';
import { convertibleLabels } from './families/index.js';
import type { WeightSource } from './checkpoint/weight-source.js';
import { formatMergeReport, LoraMergedSource, type LoraSpec } from './lora/merge.js';
import { BadInputError, OnestepError } from './errors.js';
import { withAtomicDir } from './io/atomic.js';
import type { Graph } from './onnx/graph.js';
import { fuseForCuda } from './onnx/cuda-fusions.js';
import { float16Overflows } from './onnx/fp16-check.js';
import { writeModel, type WriteProgress, type WrittenModel } from './onnx/write-model.js';
import { MODEL_FORMAT, MODEL_FORMAT_VERSION, type ModelManifest } from './runtime/model-dir.js';
import { detectRecipe, resolveRecipe } from './runtime/recipes.js';
import { CALIBRATION_PROMPT, quantizeModelDir } from './quantize.js';

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
  /**
   * 'int8': the denoiser and the VAE decoder as static int8 QDQ graphs for the CPU (src/quantize.ts), calibrated on
   * one fixed reference image. float32 and the CPU target only.
   */
  quantize?: 'int8';
  /** A TAESD decoder (AutoencoderTiny folder or taesd_decoder.safetensors) written as vae_decoder.onnx instead of the VAE's. */
  taesd?: string;
  /** A UNet alone (file or folder, diffusers or LDM keys) used instead of the checkpoint's (checkpoint/components.ts). */
  unet?: string;
  /** A VAE alone used instead of the checkpoint's (sdxl-vae-fp16-fix, ...). */
  vae?: string;
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

/** float16 graphs up to this much weight data are evaluated once (onnx/fp16-check.ts); larger ones would not fit in memory. */
const FP16_CHECK_MAX_BYTES = 512 * 2 ** 20;

/**
 * Whether a written float16 graph holds NaN/Inf on the reference input: the overflowing values (empty when it is
 * safe), or 'unchecked' for a graph too large to load here. A CUDA-target graph holds ops the CPU cannot run: its
 * plain float16 twin is written beside it under a scratch name, probed and removed.
 */
async function float16Verdict(
  graph: Graph,
  written: WrittenModel,
  target: 'cpu' | 'cuda',
  plain: () => Graph,
  dir: string,
  name: string,
  latentScale: number,
): Promise<string[] | 'unchecked'> {
  if (written.dataBytes > FP16_CHECK_MAX_BYTES) return 'unchecked';
  const scales = { latent_sample: 1 / latentScale };
  if (target === 'cpu') return float16Overflows(graph, written, scales);
  const twin = plain();
  const scratch = `${name}.fp16-check`;
  try {
    return await float16Overflows(twin, await writeModel(twin, dir, scratch), scales);
  } finally {
    await Promise.all([rm(path.join(dir, `${scratch}.onnx`), { force: true }), rm(path.join(dir, `${scratch}.onnx.data`), { force: true })]);
  }
}

/** The names a component input is known by: its own, and its parent's for a component folder (`sdxl-lightning/unet`). */
function telling(input: string): string[] {
  const abs = path.resolve(input);
  const base = path.basename(abs);
  return base === 'unet' || base === 'vae' ? [path.basename(path.dirname(abs)), base] : [base];
}

export async function convertCheckpoint(input: string, opts: ConvertOptions): Promise<ConvertResult> {
  const target = opts.target ?? 'cpu';
  const dtype = opts.dtype ?? (target === 'cuda' ? 'float16' : 'float32');
  if (opts.quantize && (target !== 'cpu' || dtype !== 'float32')) {
    throw new OnestepError(`--quantize ${opts.quantize} makes int8 graphs for the CPU from float32 ones; it cannot be combined with ${target !== 'cpu' ? `--target ${target}` : '--dtype fp16'}`, 'Drop --dtype / --target, or --quantize.');
  }
  const forTarget = (g: Graph): Graph => {
    if (target === 'cuda') fuseForCuda(g);
    return g;
  };
  let ckpt = await openCheckpoint(input, { predictionType: opts.prediction, configDir: opts.configDir });
  let replaced: ReplacedComponent[] = [];
  if (opts.unet || opts.vae) {
    try {
      ({ ckpt, replaced } = await withReplacedComponents(ckpt, { unet: opts.unet, vae: opts.vae }));
    } catch (e) {
      await ckpt.weights.close();
      throw e;
    }
  }
  try {
    checkConfigs(ckpt.configs, input);
  } catch (e) {
    await ckpt.weights.close();
    throw e;
  }
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
    // Hashed while converting (a replacement UNet is GBs, like the base): awaited when the manifest is written.
    const lorasPromise = Promise.all(loraSpecs.map(async (l) => ({ name: path.basename(l.path), sha256: await sha256Path(l.path), scale: l.scale })));
    const replacing = [...replaced.map((r) => ({ component: r.component as string, input: r.input, path: r.path })), ...(opts.taesd ? [{ component: 'taesd', input: opts.taesd, path: opts.taesd }] : [])];
    const componentsPromise = Promise.all(replacing.map(async (r) => ({ component: r.component, name: path.basename(path.resolve(r.input)), sha256: await sha256Path(r.path) })));
    lorasPromise.catch(() => undefined);
    componentsPromise.catch(() => undefined);
    // Before any graph is built: a recipe that does not fit the family must not cost a whole conversion.
    const recipe = resolveRecipe({
      family: family.id,
      explicit: opts.recipe,
      // A replacement UNet names the model (Hyper-SDXL-1step-Unet on an SDXL base) before the base does.
      detected: detectRecipe([...replaced.filter((r) => r.component === 'unet').flatMap((r) => telling(r.input)), path.basename(path.resolve(input))], ckpt.metadata),
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
    const graphs = family.graphs(ckpt).map((spec): [string, (dt: typeof dtype, forTargetToo?: boolean) => Graph] => {
      const build =
        spec.name === 'vae_decoder' && taesdDecoder
          ? (dt: typeof dtype) => buildTaesdDecoderGraph(taesdDecoder.weights, taesdDecoder.config, dt, { latentScale: latent.scaling_factor, latentShift: latent.shift_factor })
          : (dt: typeof dtype) => spec.build(weights, dt);
      return [spec.name, (dt, forTargetToo = true) => (fused.has(spec.name) && forTargetToo ? forTarget(build(dt)) : build(dt))];
    });
    const notes = [...ckpt.notes];
    let bytes = 0;
    let manifest!: ModelManifest;
    await withAtomicDir(
      opts.out,
      async (tmp) => {
        const float32Graphs: string[] = [];
        const unchecked: string[] = [];
        const built = new Map<string, { graph: Graph; written: WrittenModel }>();
        // Each float16 graph is evaluated while the next one is written (the writing waits on the disk, the
        // evaluation on the CPU), one evaluation at a time, in graph order.
        let probes = Promise.resolve();
        try {
          for (const [name, build] of graphs) {
            const progress = (p: WriteProgress) => opts.onProgress?.({ component: name, ...p });
            const graph = build(dtype);
            const written = await writeModel(graph, tmp, name, progress);
            built.set(name, { graph, written });
            if (dtype !== 'float16') continue;
            probes = probes.then(async () => {
              const verdict = await float16Verdict(graph, written, target, () => build('float16', false), tmp, name, latent.scaling_factor);
              if (verdict === 'unchecked') unchecked.push(name);
              else if (verdict.length) {
                built.set(name, { graph, written: await writeModel(build('float32'), tmp, name, progress) });
                float32Graphs.push(`${name} (NaN/Inf at ${verdict[0]})`);
              }
            });
            probes.catch(() => undefined); // awaited below; this only keeps a failure meanwhile from being unhandled
          }
        } catch (e) {
          await probes.catch(() => undefined);
          throw e;
        }
        await probes;
        for (const { written } of built.values()) bytes += written.dataBytes;
        if (float32Graphs.length) notes.push(`kept in float32, as float16 gives NaN/Inf on a reference input: ${float32Graphs.join(', ')}`);
        if (unchecked.length) notes.push(`not evaluated in float16 (over ${FP16_CHECK_MAX_BYTES / 2 ** 20} MiB of weights, too large to load within convert's memory): ${unchecked.join(', ')}`);
        await family.writeTokenizers!(ckpt, tmp);
        const names = new Set(graphs.map(([name]) => name));
        const decoderKind = (name: string) => (name === 'vae_decoder' && (taesd || inference.decoder === 'taesd') ? 'taesd' : 'autoencoder-kl');
        const components = await componentsPromise;
        manifest = {
          format: MODEL_FORMAT,
          version: MODEL_FORMAT_VERSION,
          family: family.id,
          dtype,
          source: { name: path.basename(path.resolve(input)), layout: ckpt.layout, sha256: await hashPromise, loras: await lorasPromise, ...(components.length ? { components } : {}) },
          conditioning: inference.conditioning,
          negative: inference.negative,
          denoiser: inference.denoiser,
          decoder: { graph: 'vae_decoder.onnx', kind: decoderKind('vae_decoder') },
          ...(names.has('vae_encoder') ? { encoder: { graph: 'vae_encoder.onnx', kind: inference.encoder ?? ('autoencoder-kl' as const) } } : {}),
          configs: { ...ckpt.configs, scheduler: ckpt.scheduler },
          recipe,
          latent,
          default_size: inference.default_size,
          converter: { name: 'onestep', version: ONESTEP_VERSION },
          ...(target === 'cuda' ? { target } : {}),
        };
        await writeFile(path.join(tmp, 'model.json'), JSON.stringify(manifest, null, 2) + '\n');
        if (opts.quantize === 'int8') {
          opts.onProgress?.({ component: 'int8 calibration', tensors: 0, totalTensors: 0, bytes: 0 });
          const quantized = await quantizeModelDir(tmp, manifest, built);
          for (const q of quantized) bytes += q.written.dataBytes - built.get(q.name)!.written.dataBytes;
          const sites = quantized.map((q) => `${q.name} ${q.report.convs} convs + ${q.report.matmuls} matmuls`).join(', ');
          notes.push(`int8: ${sites}, activation ranges calibrated on "${CALIBRATION_PROMPT}" (seed 0, ${manifest.default_size.width}x${manifest.default_size.height}, no guidance)`);
          manifest = { ...manifest, quantize: 'int8' };
          await writeFile(path.join(tmp, 'model.json'), JSON.stringify(manifest, null, 2) + '\n');
        }
      },
      { force: !!opts.force },
    );
    return { out: opts.out, manifest, notes, bytes, loraReport };
  } finally {
    await Promise.all([weights.close(), taesd?.weights.close()]);
  }
}
