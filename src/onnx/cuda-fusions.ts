/**
 * `convert --target cuda`: rewrites a built graph to ONNX Runtime's CUDA-only fused diffusion ops (com.microsoft),
 * the ones its Stable Diffusion optimizer uses (2.17x over plain fp16 for the SD 1.5 UNet, DESIGN.md section 3):
 *
 *   Conv                                 -> Transpose, NhwcConv (weight OHWI), Transpose
 *   group norm (+ SiLU)                  -> Transpose, GroupNorm (NHWC, activation 1 for SiLU), Transpose
 *   (x + temb[N,C,1,1]) -> group norm    -> Transpose, SkipGroupNorm (skip = temb [N, C]), Transpose
 *   GEGLU: Add(bias), Split, Gelu, Mul   -> BiasSplitGelu (hidden 2560, 5120, 10240: the sizes its kernel takes)
 *   (x @ W + b) + residual, C in {320, 640, 1280}   -> MatMul, BiasAdd
 *   self-attention q, k, v = x @ Wq, Wk, Wv          -> one MatMul on the packed [C, 3C] weight, packed-QKV MHA
 *
 * Each NHWC op is wrapped in transposes from and to NCHW, so the graph stays correct on its own; ONNX Runtime's
 * transpose optimizer cancels the pairs between neighbouring NHWC ops (and pushes them through the adds between).
 * None of these ops has a CPU kernel: a CUDA model is for CUDA only (model.json says `target: "cuda"`).
 * Group norm statistics stay float32 inside the kernel (float16 in and out), as in the CPU graph.
 */
import { isMatMulTransB, type Graph, type GroupNormSite } from './graph.js';
import type { AttrValue, NodeProtoData } from './proto.js';

export interface CudaFusionReport {
  nhwcConv: number;
  groupNorm: number;
  skipGroupNorm: number;
  biasSplitGelu: number;
  biasAdd: number;
  packedQkv: number;
}

const MS = 'com.microsoft';
const TO_NHWC = [0, 2, 3, 1];
const TO_NCHW = [0, 3, 1, 2];
const BIAS_ADD_CHANNELS = new Set([320, 640, 1280]);
const BIAS_SPLIT_GELU_HIDDEN = new Set([2560, 5120, 10240]);

export function fuseForCuda(g: Graph): CudaFusionReport {
  const report: CudaFusionReport = { nhwcConv: 0, groupNorm: 0, skipGroupNorm: 0, biasSplitGelu: 0, biasAdd: 0, packedQkv: 0 };
  const nodes = g.nodes;
  const producer = new Map<string, number>();
  const consumers = new Map<string, number[]>();
  nodes.forEach((n, i) => {
    for (const o of n.outputs) producer.set(o, i);
    for (const x of n.inputs) if (x) consumers.set(x, [...(consumers.get(x) ?? []), i]);
  });
  const graphOutputs = new Set(g.outputs.map((o) => o.name));
  const onlyUse = (value: string): number | undefined => {
    const c = consumers.get(value) ?? [];
    return c.length === 1 && !graphOutputs.has(value) ? c[0] : undefined;
  };
  const removed = new Set<number>();
  /** Replacement nodes, placed where the last node of the pattern they replace was. */
  const placed = new Map<number, NodeProtoData[]>();
  const place = (at: number, ns: NodeProtoData[]) => placed.set(at, [...(placed.get(at) ?? []), ...ns]);
  const node = (name: string, opType: string, inputs: string[], outputs: string[], attrs: [string, AttrValue][] = [], domain = ''): NodeProtoData => {
    if (domain) g.domains.add(domain);
    const type = g.valueTypes.get(inputs[0]) ?? g.initializers.get(inputs[0])?.type ?? g.inputs.find((i) => i.name === inputs[0])?.type;
    if (type) for (const o of outputs) g.valueTypes.set(o, type);
    return { name, opType, domain, inputs, outputs, attributes: attrs };
  };
  const ints = (v: number[]): AttrValue => ({ type: 'ints', value: v });
  const int = (v: number): AttrValue => ({ type: 'int', value: v });
  const float = (v: number): AttrValue => ({ type: 'float', value: v });
  const initDims = (name: string) => g.initializers.get(name)?.dims;
  const isOp = (i: number | undefined, op: string) => i !== undefined && !removed.has(i) && nodes[i].opType === op && nodes[i].domain === '';
  /** A linear layer's x @ W^T (Graph.linear). */
  const isLinear = (i: number | undefined) => i !== undefined && !removed.has(i) && isMatMulTransB(nodes[i]);

  // ---- group norms (with SiLU and the time-embedding add folded in where they are) ----
  for (const site of g.groupNormSites) {
    const range = Array.from({ length: site.count }, (_, k) => site.first + k);
    let output = site.output;
    let last = site.first + site.count - 1;
    let activation = 0;
    const sig = onlyUseOf(site.output, 'Sigmoid');
    if (sig !== undefined) {
      const uses = consumers.get(site.output) ?? [];
      const mul = (consumers.get(nodes[sig].outputs[0]) ?? [])[0];
      if (uses.length === 2 && isOp(mul, 'Mul') && uses.includes(mul) && !graphOutputs.has(site.output)) {
        activation = 1;
        range.push(sig, mul);
        output = nodes[mul].outputs[0];
        last = Math.max(last, mul);
      }
    }
    // x = h + Unsqueeze(temb, [2, 3]) feeding only this norm: SkipGroupNorm reads temb [N, C] as a broadcast skip.
    let input = site.input;
    let skip: string | undefined;
    const add = producer.get(site.input);
    const addUses = consumers.get(site.input) ?? [];
    if (isOp(add, 'Add') && addUses.every((u) => range.includes(u)) && !graphOutputs.has(site.input)) {
      const [a, b] = nodes[add!].inputs;
      const un = producer.get(b);
      if (isOp(un, 'Unsqueeze') && onlyUse(b) === add) {
        const axes = g.initializers.get(nodes[un!].inputs[1]);
        if (axes?.raw && JSON.stringify(Array.from(new BigInt64Array(axes.raw.slice().buffer), Number)) === '[2,3]') {
          input = a;
          skip = nodes[un!].inputs[0];
          range.push(add!, un!);
        }
      }
    }
    for (const i of range) removed.add(i);
    const gamma = float32Weight(g, `${site.prefix}.weight`);
    const beta = float32Weight(g, `${site.prefix}.bias`);
    const base = `/${site.prefix.replace(/\./g, '/')}`;
    const xt = `${base}/to_nhwc`;
    const yt = `${base}/nhwc_out`;
    const attrs: [string, AttrValue][] = [['activation', int(activation)], ['channels_last', int(1)], ['epsilon', float(site.eps)], ['groups', int(site.groups)]];
    place(last, [
      node(`${base}/Transpose_in`, 'Transpose', [input], [xt], [['perm', ints(TO_NHWC)]]),
      skip
        ? node(`${base}/SkipGroupNorm`, 'SkipGroupNorm', [xt, gamma, beta, skip], [yt], attrs, MS)
        : node(`${base}/GroupNorm`, 'GroupNorm', [xt, gamma, beta], [yt], attrs, MS),
      node(`${base}/Transpose_out`, 'Transpose', [yt], [output], [['perm', ints(TO_NCHW)]]),
    ]);
    if (skip) report.skipGroupNorm++;
    else report.groupNorm++;
  }

  // ---- convolutions ----
  nodes.forEach((n, i) => {
    if (removed.has(i) || n.opType !== 'Conv' || n.domain) return;
    const w = g.initializers.get(n.inputs[1]);
    if (!w?.weight || w.dims.length !== 4 || w.weight.view.reshape || w.weight.view.transpose) return;
    const name = `${w.name}.ohwi`;
    g.initializers.set(name, { name, type: w.type, dims: TO_NHWC.map((p) => w.dims[p]), weight: { key: w.weight.key, view: { permute: TO_NHWC } } });
    removed.add(i);
    const xt = `${n.name}/to_nhwc`;
    const yt = `${n.name}/nhwc_out`;
    place(i, [
      node(`${n.name}/Transpose_in`, 'Transpose', [n.inputs[0]], [xt], [['perm', ints(TO_NHWC)]]),
      node(`${n.name}/NhwcConv`, 'NhwcConv', [xt, name, ...n.inputs.slice(2)], [yt], n.attributes, MS),
      node(`${n.name}/Transpose_out`, 'Transpose', [yt], [n.outputs[0]], [['perm', ints(TO_NCHW)]]),
    ]);
    report.nhwcConv++;
  });

  // ---- GEGLU -> BiasSplitGelu ----
  nodes.forEach((n, i) => {
    if (removed.has(i) || n.opType !== 'Split' || n.outputs.length !== 2) return;
    const add = producer.get(n.inputs[0]);
    if (!isOp(add, 'Add') || onlyUse(n.inputs[0]) !== i) return;
    const [mm, bias] = nodes[add!].inputs;
    const hidden = initDims(bias);
    if (!hidden || hidden.length !== 1 || !BIAS_SPLIT_GELU_HIDDEN.has(hidden[0])) return;
    const gelu = onlyUse(n.outputs[1]);
    if (!isOp(gelu, 'Gelu')) return;
    const mul = onlyUse(nodes[gelu!].outputs[0]);
    if (!isOp(mul, 'Mul') || onlyUse(n.outputs[0]) !== mul) return;
    for (const k of [add!, i, gelu!, mul!]) removed.add(k);
    place(mul!, [node(`${n.name.replace(/\/Split$/, '')}/BiasSplitGelu`, 'BiasSplitGelu', [mm, bias], [nodes[mul!].outputs[0]], [], MS)]);
    report.biasSplitGelu++;
  });

  // ---- (x @ W + b) + residual -> BiasAdd, inside transformer blocks ([B, S, C] tokens) ----
  nodes.forEach((n, i) => {
    if (removed.has(i) || n.opType !== 'Add' || n.domain) return;
    const [inner, residual] = n.inputs;
    const ia = producer.get(inner);
    if (!isOp(ia, 'Add') || onlyUse(inner) !== i) return;
    const [mm, bias] = nodes[ia!].inputs;
    const c = initDims(bias);
    const m = producer.get(mm);
    if (!c || c.length !== 1 || !BIAS_ADD_CHANNELS.has(c[0]) || !(isOp(m, 'MatMul') || isLinear(m)) || onlyUse(mm) !== ia) return;
    // Only where the MatMul reads tokens: the output of attention or of the feed-forward's gated GELU.
    const src = producer.get(nodes[m!].inputs[0]);
    const srcOp = src === undefined ? '' : nodes[src].opType;
    if (!['MultiHeadAttention', 'Mul', 'BiasSplitGelu'].includes(srcOp) && !placedOp(placed, nodes[m!].inputs[0], 'BiasSplitGelu')) return;
    removed.add(ia!);
    removed.add(i);
    place(i, [node(`${nodes[ia!].name}/BiasAdd`, 'BiasAdd', [mm, bias, residual], [n.outputs[0]], [], MS)]);
    report.biasAdd++;
  });

  // ---- self-attention with bias-free q, k, v projections of one input -> packed QKV ----
  nodes.forEach((n, i) => {
    if (removed.has(i) || n.opType !== 'MultiHeadAttention' || n.domain !== MS) return;
    const [q, k, v, ...rest] = n.inputs;
    if (rest.some((x) => x)) return;
    const mms = [q, k, v].map((t) => producer.get(t));
    if (!mms.every(isLinear)) return;
    const x = nodes[mms[0]!].inputs[0];
    if (!mms.every((m, j) => nodes[m!].inputs[0] === x && onlyUse([q, k, v][j]) === i)) return;
    const ws = mms.map((m) => g.initializers.get(nodes[m!].inputs[1]));
    // The stored [out, in] weights as they are (the pack view reads them so).
    if (!ws.every((w) => w?.weight && Object.keys(w.weight.view).length === 0 && w.dims.length === 2)) return;
    const heads = Number((n.attributes.find(([a]) => a === 'num_heads')?.[1] as { value: number }).value);
    const [c, inF] = ws[0]!.dims;
    if (!ws.every((w) => w!.dims[0] === c && w!.dims[1] === inF) || c % heads) return;
    const keys = ws.map((w) => w!.weight!.key);
    const name = `${keys[0].replace(/\.to_q\.weight$/, '')}.to_qkv.packed`;
    g.initializers.set(name, { name, type: ws[0]!.type, dims: [inF, 3 * c], weight: { key: keys[0], view: { pack: { keys, heads } } } });
    const shape = g.ints([0, 0, heads, 3, c / heads]).name;
    const base = n.name.replace(/\/MultiHeadAttention$/, '');
    const packed = `${base}/qkv`;
    const reshaped = `${base}/qkv_packed`;
    for (const m of mms) removed.add(m!);
    removed.add(i);
    place(i, [
      node(`${base}/to_qkv/MatMul`, 'MatMul', [x, name], [packed]),
      node(`${base}/to_qkv/Reshape`, 'Reshape', [packed, shape], [reshaped]),
      node(n.name, 'MultiHeadAttention', [reshaped], n.outputs, n.attributes, MS),
    ]);
    report.packedQkv++;
  });

  const out: NodeProtoData[] = [];
  nodes.forEach((n, i) => {
    if (!removed.has(i)) out.push(n);
    out.push(...(placed.get(i) ?? []));
  });
  nodes.splice(0, nodes.length, ...out);
  dropUnused(g);
  return report;

  function onlyUseOf(value: string, op: string): number | undefined {
    return (consumers.get(value) ?? []).find((c) => isOp(c, op));
  }
}

function placedOp(placed: Map<number, NodeProtoData[]>, value: string, op: string): boolean {
  for (const ns of placed.values()) if (ns.some((n) => n.opType === op && n.outputs.includes(value))) return true;
  return false;
}

/** The stored `key` as a float32 initializer (GroupNorm takes float32 gamma and beta whatever the activations are). */
function float32Weight(g: Graph, key: string): string {
  const name = `${key}.gamma_beta_f32`;
  g.initializers.set(name, { name, type: 'float32', dims: [g.weightShape(key)[0]], weight: { key, view: {} } });
  return name;
}

/** Initializers no node reads any more (the [C, 1, 1] group norm views, the separate q/k/v weights). */
function dropUnused(g: Graph): void {
  const used = new Set(g.nodes.flatMap((n) => n.inputs));
  for (const name of [...g.initializers.keys()]) if (!used.has(name)) g.initializers.delete(name);
}
