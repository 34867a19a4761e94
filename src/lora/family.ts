/** Which model families a LoRA fits (for inspect and for wrong-family errors), and what inspect prints of it. */
import { familiesByContextWidth, type FamilyId } from '../families/index.js';
import { LoraFile, type LoraFileSummary } from './parse.js';

export type LoraFamilyGuess = FamilyId;

export interface LoraDescription {
  path: string;
  keyStyle: LoraFileSummary['style'];
  /** Families the LoRA can be for, best first; several when nothing tells them apart (tiny test models). */
  families: LoraFamilyGuess[];
  familyEvidence: string;
  components: LoraFileSummary['components'];
  moduleCount: number;
  kinds: LoraFileSummary['kinds'];
  rankAlpha: LoraFileSummary['rankAlpha'];
  doraModules: number;
  unrecognizedKeys: number;
  metadata: Readonly<Record<string, string>>;
}

/** Which model families a LoRA fits, from its component and module names and widths. */
export function guessLoraFamily(file: LoraFile): { families: LoraFamilyGuess[]; evidence: string } {
  const mods = file.modules;
  const dit = mods.find((m) => m.component === 'transformer');
  if (dit) return { families: ['pixart-alpha'], evidence: `targets the transformer (${dit.group.path})` };
  if (mods.some((m) => m.component === 'text_encoder_2')) return { families: ['sdxl'], evidence: 'has a second text encoder (te2)' };
  const sdxlUnet = mods.find((m) => m.component === 'unet' && /(^|[._])(add_embedding|label_emb)([._]|$)/.test(m.group.path));
  if (sdxlUnet) return { families: ['sdxl'], evidence: `targets ${sdxlUnet.group.path} (SDXL's added embedding)` };
  // Cross-attention key/value projections read the text encoder's width: 768 SD1, 1024 SD2, 2048 SDXL.
  const crossKv = mods.find((m) => m.component === 'unet' && /attn2[._]to_[kv]$/.test(m.group.path));
  const width = crossKv?.inFlat;
  const byWidth = (w: number | undefined): LoraFamilyGuess | undefined => {
    const found = w === undefined ? [] : familiesByContextWidth(w);
    return found.length === 1 ? found[0].id : undefined;
  };
  const crossFamily = byWidth(width);
  if (crossFamily) return { families: [crossFamily], evidence: `cross-attention width ${width}` };
  // SD 1.x / 2.x condition on their one text encoder's hidden states, so its width is the context width.
  const te = mods.find((m) => m.component === 'text_encoder' && /q_proj$/.test(m.group.path));
  const teFamily = byWidth(te?.inFlat);
  if (te && teFamily && teFamily !== 'sdxl') return { families: [teFamily], evidence: `text encoder width ${te.inFlat}` };
  const evidence =
    width !== undefined ? `cross-attention width ${width} is no released model's; unet + one text encoder` : 'unet / text encoder module names';
  return { families: ['sd1', 'sd2'], evidence };
}

/** What `inspect` prints about a LoRA file. */
export async function describeLora(path: string): Promise<LoraDescription> {
  const file = await LoraFile.open(path);
  try {
    const s = file.summary();
    const fam = guessLoraFamily(file);
    return {
      path,
      keyStyle: s.style,
      families: fam.families,
      familyEvidence: fam.evidence,
      components: s.components,
      moduleCount: file.modules.length,
      kinds: s.kinds,
      rankAlpha: s.rankAlpha,
      doraModules: s.dora,
      unrecognizedKeys: file.unrecognized.size,
      metadata: file.store.metadata,
    };
  } finally {
    await file.close();
  }
}
