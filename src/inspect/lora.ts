/** A LoRA file: key style, modules per component, kinds, rank/alpha pairs, the families it fits. */
import { describeLora } from '../lora/family.js';
import { LoraFile } from '../lora/parse.js';
import { dtypeWarnings, EXAMPLES, finish, Tally, type InspectReport, type StoredTensor } from './report.js';

export async function inspectLora(path: string, stored: StoredTensor[], metadata: Record<string, string>): Promise<InspectReport> {
  const description = await describeLora(path);
  const file = await LoraFile.open(path);
  const tally = new Tally();
  const byKey = new Map(stored.map((t) => [t.key, t]));
  let unrecognized: string[];
  try {
    for (const m of file.modules) {
      for (const key of m.group.keys.values()) {
        const t = byKey.get(key);
        if (t) tally.add(m.component, t.dtype, t.numel, t.id);
      }
    }
    unrecognized = [...file.unrecognized.keys()];
  } finally {
    await file.close();
  }
  const warnings: string[] = [];
  if (unrecognized.length) {
    warnings.push(`${unrecognized.length} key(s) are not LoRA tensors onestep can apply, e.g. ${unrecognized.slice(0, EXAMPLES).join(', ')}`);
  }
  warnings.push(...dtypeWarnings(tally.components));
  return finish({
    path,
    kind: 'lora',
    layout: 'lora',
    family: description.families.join('|'),
    convertible: false,
    components: tally.components,
    unused: tally.unused(stored),
    lora: {
      keyStyle: description.keyStyle,
      families: description.families,
      familyEvidence: description.familyEvidence,
      modules: description.moduleCount,
      modulesPerComponent: description.components,
      kinds: description.kinds,
      rankAlpha: description.rankAlpha,
      doraModules: description.doraModules,
      unrecognizedKeys: description.unrecognizedKeys,
      unrecognizedExamples: unrecognized.slice(0, EXAMPLES),
    },
    metadata,
    notes: [],
    warnings,
  });
}
