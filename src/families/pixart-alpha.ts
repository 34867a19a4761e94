/**
 * PixArt-α (YOSO-PixArt, PixArt-DMD; PixArt-Σ transformers of the same class): a DiT (PixArtTransformer2DModel)
 * conditioned on a T5 v1.1 XXL encoder through masked cross-attention, an AutoencoderKL. Published as diffusers
 * folders.
 */
import type { FamilyDef } from './types.js';

export const PIXART_ALPHA: FamilyDef = {
  id: 'pixart-alpha',
  label: 'PixArt-α',
  convertible: false,
  detectFolder: ({ pipelineClass }) => /^PixArt(Alpha|Sigma)Pipeline$/.test(pipelineClass),
  folderComponents: ['transformer', 'text_encoder', 'vae'],
  singleFilePrefixes: {},
  lora: { components: ['transformer'], contextWidths: [] },
};
