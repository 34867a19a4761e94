/**
 * onestep as a library: what the commands call. Convert a checkpoint into a model directory, generate images from a
 * prompt file or stream, say what a file is, merge LoRAs into a checkpoint.
 */
export { convertCheckpoint, type ConvertOptions, type ConvertProgress, type ConvertResult, type LoraSpec } from './convert.js';
export { generateImages, type GenerateOptions, type GenerateSummary } from './generate.js';
export { formatInspectReport, inspectPath, type InspectReport } from './inspect.js';
export { mergeLorasIntoCheckpoint, type MergeCheckpointOptions, type MergeCheckpointResult } from './lora/merge-checkpoint.js';
export { resolveModel } from './models.js';
export { FAMILIES, familyById, type FamilyDef, type FamilyId } from './families/index.js';
export { readModelManifest, type ModelManifest } from './runtime/model-dir.js';
export { BadInputError, OnestepError } from './errors.js';
