/**
 * The family registry: every model family onestep knows, in detection order (the more specific first). The rest of
 * the code asks these functions, never a family union of its own.
 */
import { PIXART_ALPHA } from './pixart-alpha.js';
import { SD1, SD2 } from './sd.js';
import { SDXL } from './sdxl.js';
import { SDXS } from './sdxs.js';
import type { FamilyDef, FamilyId, FolderInput } from './types.js';

export type { Checkpoint, FamilyDef, FamilyId, FolderInput, GraphSpec, InferenceDeclaration, Layout, OpenOptions, SingleFileInput } from './types.js';

export const FAMILIES: readonly FamilyDef[] = [SDXL, PIXART_ALPHA, SDXS, SD1, SD2];

export const FAMILY_IDS = FAMILIES.map((f) => f.id);

export function familyById(id: string): FamilyDef | undefined {
  return FAMILIES.find((f) => f.id === id);
}

/** A family's label ('SD 1.x'), or the id itself for ids onestep does not know. */
export function familyLabel(id: string): string {
  return familyById(id)?.label ?? id;
}

/** The family whose original single-file layout these keys are, if any. */
export function singleFileFamily(keys: readonly string[]): FamilyDef | undefined {
  return FAMILIES.find((f) => f.detectSingleFile?.(keys));
}

/** The family of a diffusers pipeline folder, if onestep knows it. `configs`: its components' config.json files. */
export function folderFamily(folder: FolderInput, configs?: Readonly<Record<string, Readonly<Record<string, unknown>>>>): FamilyDef | undefined {
  return FAMILIES.find((f) => f.detectFolder?.(folder, configs));
}

/** Families a denoiser whose cross-attention reads `width`-wide text conditioning belongs to. */
export function familiesByContextWidth(width: number): FamilyDef[] {
  return FAMILIES.filter((f) => f.lora.contextWidths.includes(width));
}

/** Families that convert, for messages ("onestep converts SD 1.x, SD 2.x, ..."). */
export function convertibleLabels(): string {
  return FAMILIES.filter((f) => f.convertible).map((f) => f.label).join(', ');
}

export function isFamilyId(id: string): id is FamilyId {
  return FAMILY_IDS.includes(id as FamilyId);
}
