/**
 * Stable Diffusion XL (SDXL-Turbo, DMD2, Hyper-SDXL, SDXL-Lightning, NitroFusion): a three-level UNet with added
 * text-time conditioning, two text encoders (CLIP ViT-L and OpenCLIP bigG with projection), an AutoencoderKL.
 * Single files are the SGM / A1111 layout (conditioner.embedders.N.*, model.diffusion_model.label_emb.*).
 */
import type { FamilyDef } from './types.js';

export const SDXL: FamilyDef = {
  id: 'sdxl',
  label: 'SDXL',
  convertible: false,
  detectSingleFile: (keys) => keys.some((k) => k.startsWith('conditioner.embedders.') || k.startsWith('model.diffusion_model.label_emb.')),
  detectFolder: ({ index, pipelineClass }) => /^StableDiffusionXL/.test(pipelineClass) || 'text_encoder_2' in index,
  folderComponents: ['unet', 'text_encoder', 'text_encoder_2', 'vae'],
  singleFilePrefixes: {
    unet: ['model.diffusion_model.'],
    vae: ['first_stage_model.'],
    text_encoder: ['conditioner.embedders.0.'],
    text_encoder_2: ['conditioner.embedders.1.'],
  },
  lora: { components: ['unet', 'text_encoder', 'text_encoder_2'], contextWidths: [2048] },
};
