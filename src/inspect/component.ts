/**
 * A UNet or VAE alone (what `convert <base> --unet / --vae` takes): counted under canonical names as convert reads
 * it; a UNet's family guessed from the width of the text conditioning its cross-attention reads.
 */
import { openComponent, type ComponentKeys } from '../checkpoint/components.js';
import { numel } from '../checkpoint/weight-source.js';
import { familiesByContextWidth } from '../families/index.js';
import { finish, Tally, unknownKeysWarning, type InspectReport, type StoredTensor } from './report.js';

export async function inspectComponent(path: string, found: ComponentKeys, stored: StoredTensor[], metadata: Record<string, string>): Promise<InspectReport> {
  const opened = await openComponent(path, found.component);
  try {
    const tally = new Tally();
    for (const name of opened.weights.names()) {
      const meta = opened.weights.meta(name);
      const src = opened.weights.sourceOf(name);
      tally.add(found.component, meta.dtype, numel(meta.shape), `${src.file}\0${src.key}`);
    }
    const crossKey = opened.weights.names().find((n) => /\.attn2\.to_k\.weight$/.test(n));
    const width = crossKey ? opened.weights.meta(crossKey).shape[1] : undefined;
    const families = width === undefined ? [] : familiesByContextWidth(width).map((f) => f.id);
    const what = found.component === 'unet' ? 'a UNet alone' : 'a VAE alone';
    return finish({
      path,
      kind: 'component',
      layout: 'single-file',
      family: families.length ? families.join('|') : 'unknown',
      convertible: false,
      components: tally.components,
      unused: tally.unused(stored),
      metadata,
      notes: [
        `${what} (${found.style} keys${width === undefined ? '' : `, cross-attention width ${width}`}): convert it with the checkpoint it belongs to, \`onestep convert <base> --${found.component} ${path}\``,
      ],
      warnings: opened.unmapped.length ? [unknownKeysWarning(opened.unmapped)] : [],
    });
  } finally {
    await opened.weights.close();
  }
}
