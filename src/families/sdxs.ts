/**
 * SDXS (SDXS-512-DreamShaper, SDXS-512-0.9): an SD 1.5-based three-level UNet without a mid block, conditioned on CLIP
 * ViT-L, whose `vae/` is an AutoencoderTiny used as the main decoder. Published as diffusers folders only.
 */
import type { FamilyDef } from './types.js';

export const SDXS: FamilyDef = {
  id: 'sdxs',
  label: 'SDXS',
  convertible: false,
  detectFolder: ({ index }) => Array.isArray(index.vae) && index.vae[1] === 'AutoencoderTiny' && 'unet' in index && !('text_encoder_2' in index),
  folderComponents: ['unet', 'text_encoder', 'vae'],
  singleFilePrefixes: {},
  lora: { components: ['unet', 'text_encoder'], contextWidths: [] },
};
