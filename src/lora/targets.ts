/** Resolving LoRA module names against a base's canonical weight names (diffusers-style and LDM-style kohya names). */
import { canonicalUnetToLdm, type UnetLdmLayout } from '../checkpoint/keymap-sd.js';
import type { LoraModuleGroup } from './keys.js';

export interface TargetIndex {
  /** Canonical module names (`unet.down_blocks.0.attentions.0.proj_in`) that have a `.weight`. */
  modules: Set<string>;
  /** `${component}:${underscored path}` -> canonical module, for kohya names (diffusers- and LDM-style). */
  underscored: Map<string, string>;
  components: Set<string>;
}

/**
 * The base UNet's LDM layout, from its own names: layers per block, and which up blocks have attention (SD: all but
 * block 0; SDXL: blocks 0 and 1), which decides whether an up block's upsampler is `output_blocks.N.1` or `.2`.
 */
function unetLdmLayout(names: string[]): UnetLdmLayout {
  const resnets = new Set<number>();
  const upAttention = new Set<number>();
  for (const n of names) {
    let m = /^unet\.down_blocks\.0\.resnets\.(\d+)\./.exec(n);
    if (m) resnets.add(Number(m[1]));
    m = /^unet\.up_blocks\.(\d+)\.attentions\./.exec(n);
    if (m) upAttention.add(Number(m[1]));
  }
  return { layersPerBlock: resnets.size || 2, upBlockHasAttention: (b) => upAttention.has(b) };
}

/** Builds the name index once per base from its canonical weight names. */
export function buildTargetIndex(baseNames: Iterable<string>): TargetIndex {
  const names = [...baseNames];
  const layout = unetLdmLayout(names);
  const modules = new Set<string>();
  const underscored = new Map<string, string>();
  const ambiguous = new Set<string>();
  const components = new Set<string>();
  const add = (key: string, module: string) => {
    const prev = underscored.get(key);
    if (prev !== undefined && prev !== module) ambiguous.add(key);
    else underscored.set(key, module);
  };
  for (const name of names) {
    const dot = name.indexOf('.');
    if (dot < 0) continue;
    components.add(name.slice(0, dot));
    if (!name.endsWith('.weight')) continue;
    const module = name.slice(0, -'.weight'.length);
    modules.add(module);
    const component = name.slice(0, dot);
    const path = module.slice(dot + 1);
    add(`${component}:${path.replace(/\./g, '_')}`, module);
    if (component === 'unet') {
      // LDM-style kohya names (`lora_unet_input_blocks_4_1_proj_in`), as SD-trained kohya LoRAs write them.
      const ldm = canonicalUnetToLdm(`${path}.weight`, layout);
      if (ldm !== undefined) add(`unet:${ldm.slice(0, -'.weight'.length).replace(/\./g, '_')}`, module);
    }
  }
  for (const key of ambiguous) underscored.delete(key);
  return { modules, underscored, components };
}

/** Finds the canonical module a LoRA module targets, or undefined. */
export function resolveTarget(group: LoraModuleGroup, index: TargetIndex): string | undefined {
  if (group.style === 'kohya') return index.underscored.get(`${group.component}:${group.path}`);
  const module = `${group.component}.${group.path}`;
  return index.modules.has(module) ? module : undefined;
}
