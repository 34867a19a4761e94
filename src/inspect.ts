/**
 * `onestep inspect`: what a checkpoint or LoRA is, from its headers alone (tensor data is never read, except the
 * scalar `.alpha` tensors of a LoRA), so it takes milliseconds even on multi-gigabyte files.
 *
 * JSON shape (`onestep inspect --json`), stable:
 * {
 *   path: string,
 *   kind: 'checkpoint' | 'lora' | 'component',   // component: a UNet or VAE alone (convert <base> --unet / --vae)
 *   layout: 'single-file' | 'diffusers' | 'lora',
 *   family: a family id of src/families (sd1, sd2, sdxl, sdxs, pixart-alpha) or 'unknown' (a LoRA that fits several: 'sd1|sd2'),
 *   convertible: boolean,                  // whether `onestep convert` takes it as it is
 *   totalParameters: number,               // sum over components
 *   components: { [name]: { parameters: number, tensors: number (as stored), dtypes: { [dtype]: parameters } } },
 *   unused: { parameters: number, tensors: number, examples: string[] },  // stored tensors no component uses
 *   config?: { [component]: { ...config.json as read, or as inferred from shapes } },
 *   lora?: { keyStyle, families, familyEvidence, modules, modulesPerComponent, kinds, rankAlpha, doraModules,
 *            unrecognizedKeys, unrecognizedExamples },
 *   metadata: { [key]: string },           // the file's __metadata__; folders: `<component>/<key>`
 *   notes: string[],                       // how things were decided (configs inferred, EMA used, ...)
 *   warnings: string[]
 * }
 * Components of a checkpoint: unet / vae / text_encoder (SD), transformer / text_encoder / vae (PixArt), plus
 * text_encoder_2 (SDXL) and any other weight folder of a diffusers pipeline (e.g. safety_checker).
 * Counts of convertible checkpoints are over the canonical tensors onestep uses; of other files over raw key prefixes.
 */
import { isDirectory } from './checkpoint/detect.js';
import { inspectFile } from './inspect/file.js';
import { inspectFolder } from './inspect/folder.js';
import type { InspectReport } from './inspect/report.js';

export { formatInspectReport } from './inspect/format.js';
export type { ComponentReport, InspectFamily, InspectReport, LoraReport, UnusedReport } from './inspect/report.js';

/**
 * Inspects a tensor file (.safetensors or a PyTorch pickle; checkpoint or LoRA) or a diffusers folder. Throws
 * OnestepError for unreadable input. How each pickle was read (and the globals kept inert) comes first in the notes.
 */
export async function inspectPath(path: string): Promise<InspectReport> {
  const pickled: string[] = [];
  const report = (await isDirectory(path)) ? await inspectFolder(path, pickled) : await inspectFile(path, pickled);
  report.notes.unshift(...pickled);
  return report;
}
