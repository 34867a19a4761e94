/**
 * `convert --quantize int8`: the denoiser and the VAE decoder of a freshly written float32 model directory become
 * static int8 QDQ graphs (onnx/int8.ts), with activation ranges calibrated deterministically: the model generates one
 * image of CALIBRATION_PROMPT from seed 0 at its default size, no guidance, through probe graphs that also output the
 * min and max of every quantized op's input and output. One reference input, fixed, so the same checkpoint always
 * gives the same bytes; ranges outside what this image reaches saturate.
 */
import os from 'node:os';
import path from 'node:path';
import { rm } from 'node:fs/promises';
import type { Graph } from './onnx/graph.js';
import { quantizeGraphInt8, rangeProbes, type Int8Report, type Range } from './onnx/int8.js';
import { writeGraphProto, writeModel, type WrittenModel } from './onnx/write-model.js';
import { InferencePipeline } from './runtime/engine-worker.js';
import type { ModelManifest } from './runtime/model-dir.js';
import { alphaBar } from './runtime/schedule.js';

export const CALIBRATION_PROMPT = 'a photograph of an astronaut riding a horse on the moon, detailed, 8k';
export const CALIBRATION_SEED = 0n;

export interface QuantizedGraph {
  name: string;
  report: Int8Report;
  written: WrittenModel;
}

/**
 * Calibrates and rewrites the denoiser and decoder graphs of the model directory `dir` (model.json already written,
 * every graph in float32). `graphs`: the built Graph of each written graph file name ('unet', ...), as written.
 */
export async function quantizeModelDir(dir: string, manifest: ModelManifest, graphs: Map<string, { graph: Graph; written: WrittenModel }>): Promise<QuantizedGraph[]> {
  const roles = { denoiser: manifest.denoiser.graph, decoder: manifest.decoder.graph };
  const names = Object.values(roles).map((g) => g.replace(/\.onnx$/, ''));
  const probeFile = (name: string) => `${name}.int8-probe.onnx`;
  const ranges = new Map<string, Map<string, Range>>(names.map((n) => [n, new Map()]));
  try {
    for (const name of names) {
      const { graph, written } = graphs.get(name)!;
      const probes = rangeProbes(graph);
      await writeGraphProto(graph, written.initializers, [...graph.outputs, ...probes.outputs], path.join(dir, probeFile(name)), probes.nodes);
    }
    const recipe = manifest.recipe;
    const pipeline = await InferencePipeline.load({
      modelDir: dir,
      manifest: { ...manifest, denoiser: { ...manifest.denoiser, graph: probeFile(names[0]) }, decoder: { ...manifest.decoder, graph: probeFile(names[1]) } },
      device: { kind: 'cpu' },
      threads: os.availableParallelism(),
      // The probe sessions run once: no prepacked or reordered copies of the weights, which stay mapped from disk.
      disablePrepacking: true,
      optimization: 'basic',
      graphCache: false,
      recipe: { prediction_type: recipe.prediction_type, timestep: recipe.timestep },
      alphaBar: recipe.prediction_type === 'flow' ? Number.NaN : alphaBar(manifest.configs.scheduler, recipe.timestep),
    });
    try {
      pipeline.onRun = (role, outputs) => {
        const into = ranges.get(names[role === 'denoiser' ? 0 : 1])!;
        for (const [key, t] of Object.entries(outputs)) {
          const at = key.lastIndexOf('::');
          if (at < 0) continue;
          const value = key.slice(0, at);
          const r = into.get(value) ?? { min: Infinity, max: -Infinity };
          const v = Number(t.data[0]);
          if (key.endsWith('::min')) r.min = Math.min(r.min, v);
          else if (key.endsWith('::max')) r.max = Math.max(r.max, v);
          else r.size = v;
          into.set(value, r);
        }
      };
      const { width, height } = manifest.default_size;
      const [image] = await pipeline.generate([{ index: 0, prompt: CALIBRATION_PROMPT, negativePrompt: '', seed: CALIBRATION_SEED, width, height, guidance: 0 }]);
      if (image.nonFinite) throw new Error(`int8 calibration: ${image.nonFinite}`);
    } finally {
      await pipeline.release();
    }
  } finally {
    await Promise.all(names.map((n) => rm(path.join(dir, probeFile(n)), { force: true })));
  }
  const out: QuantizedGraph[] = [];
  for (const name of names) {
    const { graph } = graphs.get(name)!;
    const report = quantizeGraphInt8(graph, ranges.get(name)!);
    out.push({ name, report, written: await writeModel(graph, dir, name) });
  }
  return out;
}
