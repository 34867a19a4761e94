import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Graph } from '../../src/onnx/graph.js';
import { activationParams, int8Sites, quantizeGraphInt8, rangeName, rangeProbes, type Range } from '../../src/onnx/int8.js';
import { countFlops } from '../../src/onnx/flops.js';
import { decodeModelStructure, graphStructure } from '../../src/onnx/read-model.js';
import { writeGraphProto, writeModel } from '../../src/onnx/write-model.js';
import { memoryWeights } from '../support/fixtures.js';
import { signedRandom } from '../support/random.js';

const [CIN, COUT, H, W] = [12, 16, 12, 12]; // over 8 channels: convs with fewer stay float32
const [ROWS, IN, OUT] = [300, 16, 24]; // 300 rows: MatMuls under 256 stay float32

describe('onnx/int8', function () {
  this.timeout(60_000);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'onestep-int8-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const rand = signedRandom(3);
  const values = (n: number, scale: number) => Array.from({ length: n }, () => rand() * scale);
  const tensors = {
    'conv.weight': { shape: [COUT, CIN, 3, 3], data: values(COUT * CIN * 9, 0.3) },
    'conv.bias': { shape: [COUT], data: values(COUT, 0.5) },
    'lin.weight': { shape: [OUT, IN], data: values(OUT * IN, 0.4) },
    'lin.bias': { shape: [OUT], data: values(OUT, 0.5) },
  };
  // The conv's input is mostly positive (as after SiLU), the linear's symmetric: both zero-point cases occur.
  const x = Float32Array.from(values(CIN * H * W, 1), (v) => v * 1.5 + 0.4);
  const t = Float32Array.from(values(ROWS * IN, 2));
  const feeds = () => ({ x: new ort.Tensor('float32', x, [1, CIN, H, W]), t: new ort.Tensor('float32', t, [ROWS, IN]) });

  function build(): Graph {
    const g = new Graph('int8', memoryWeights(tensors));
    const xv = g.input('x', 'float32', [1, CIN, H, W]);
    const tv = g.input('t', 'float32', [ROWS, IN]);
    g.output(g.conv2d(xv, 'conv'), 'y', [1, COUT, H, W]);
    g.output(g.linear(tv, 'lin'), 'z', [ROWS, OUT]);
    return g;
  }

  /** Calibrates as convert does: the float32 graph's probe proto, every quantized op's input and output reduced to min/max. */
  async function calibrate(): Promise<Map<string, Range>> {
    const g = build();
    const written = await writeModel(g, tmp, 'f32');
    const probes = rangeProbes(g);
    const probePath = path.join(tmp, 'f32.probe.onnx');
    await writeGraphProto(g, written.initializers, [...g.outputs, ...probes.outputs], probePath, probes.nodes);
    const session = await ort.InferenceSession.create(probePath);
    const out = await session.run(feeds());
    await session.release();
    const ranges = new Map<string, Range>();
    for (const o of probes.outputs) {
      const [value, end] = o.name.split('::');
      const r = ranges.get(value) ?? { min: NaN, max: NaN };
      r[end as 'min' | 'max' | 'size'] = Number(out[o.name].data[0]);
      ranges.set(value, r);
    }
    return ranges;
  }

  it('runs Conv and MatMul as fused int8 kernels whose outputs are the quantized math computed in float64 (within one output step)', async () => {
    const ranges = await calibrate();
    assert.equal(ranges.size, 4); // conv in/out, matmul in/out
    assert.equal(ranges.get('t')!.size, ROWS * IN);
    const g = build();
    const report = quantizeGraphInt8(g, ranges);
    assert.deepEqual(report, { convs: 1, matmuls: 1 });
    // The int8 graph does the same arithmetic: the FLOP count (`onestep bench`) walks through its Q / DQ nodes.
    const flops = (graph: Graph) => countFlops(graphStructure(graph), {});
    assert.deepEqual(flops(g), { ...flops(build()), nodes: g.nodes.length });
    assert.equal(flops(g).flops, 2 * COUT * H * W * CIN * 9 + 2 * ROWS * IN * OUT);
    assert.ok(![...g.initializers.keys()].some((n) => n === 'conv.weight' || n === 'lin.weight'), 'the float32 weights are no longer stored');
    const { onnxPath } = await writeModel(g, tmp, 'q');
    const optimized = path.join(tmp, 'q.opt.onnx');
    const session = await ort.InferenceSession.create(onnxPath, { graphOptimizationLevel: 'all', optimizedModelFilePath: optimized, logSeverityLevel: 3 });
    const out = await session.run(feeds());
    await session.release();
    const ops = decodeModelStructure(fs.readFileSync(optimized)).nodes.map((n) => n.opType);
    assert.ok(ops.includes('QLinearConv'), `optimized ops: ${ops.join(' ')}`);
    assert.ok(ops.includes('QGemm') || ops.includes('QLinearMatMul'), `optimized ops: ${ops.join(' ')}`);
    assert.ok(!ops.includes('Conv') && !ops.includes('MatMul') && !ops.includes('FusedMatMul') && !ops.includes('Gemm'), `float ops left: ${ops.join(' ')}`);

    // The reference, independently: symmetric per-channel 7-bit weights (max|w| / 63: uint8 x int8 pair sums then
    // stay below int16's limit, so CPUs without VNNI compute the same integers), uint8 activations over
    // [min(lo, 0), max(hi, 0)], the conv bias as int32 at sx * sw, integer accumulation, requantized output.
    const f = Math.fround;
    const q8 = (v: number, p: { scale: number; zero: number }) => Math.max(0, Math.min(255, roundHalfEven(v / p.scale) + p.zero));
    const perChannel = (w: number[], channels: number, at: (c: number, i: number) => number, per: number) =>
      Array.from({ length: channels }, (_, c) => {
        let m = 0;
        for (let i = 0; i < per; i++) m = Math.max(m, Math.abs(w[at(c, i)]));
        const s = f(m / 63);
        return { s, q: Array.from({ length: per }, (_, i) => Math.round(w[at(c, i)] / s)) };
      });
    const [convSite, mmSite] = int8Sites(build());
    const px = activationParams(ranges.get(convSite.x)!);
    const py = activationParams(ranges.get(convSite.y)!);
    const cw = perChannel(tensors['conv.weight'].data, COUT, (c, i) => c * CIN * 9 + i, CIN * 9);
    const xq = Array.from(x, (v) => q8(v, px) - px.zero);
    const refY = new Float64Array(COUT * H * W);
    for (let co = 0; co < COUT; co++) {
      const bq = Math.round(tensors['conv.bias'].data[co] / (px.scale * cw[co].s));
      for (let yy = 0; yy < H; yy++) {
        for (let xx = 0; xx < W; xx++) {
          let acc = bq;
          for (let ci = 0; ci < CIN; ci++) {
            for (let ky = 0; ky < 3; ky++) {
              for (let kx = 0; kx < 3; kx++) {
                const iy = yy + ky - 1;
                const ix = xx + kx - 1;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += xq[(ci * H + iy) * W + ix] * cw[co].q[(ci * 3 + ky) * 3 + kx];
              }
            }
          }
          refY[(co * H + yy) * W + xx] = (q8(acc * px.scale * cw[co].s, py) - py.zero) * py.scale;
        }
      }
    }
    checkSteps(out.y.data as Float32Array, refY, py.scale, 'conv');

    const pt = activationParams(ranges.get(mmSite.x)!);
    const pz = activationParams(ranges.get(mmSite.y)!);
    const lw = perChannel(tensors['lin.weight'].data, OUT, (c, i) => c * IN + i, IN);
    const tq = Array.from(t, (v) => q8(v, pt) - pt.zero);
    const refZ = new Float64Array(ROWS * OUT);
    for (let r = 0; r < ROWS; r++) {
      for (let o = 0; o < OUT; o++) {
        let acc = 0;
        for (let i = 0; i < IN; i++) acc += tq[r * IN + i] * lw[o].q[i];
        refZ[r * OUT + o] = (q8(acc * pt.scale * lw[o].s, pz) - pz.zero) * pz.scale + tensors['lin.bias'].data[o];
      }
    }
    checkSteps(out.z.data as Float32Array, refZ, pz.scale, 'linear');
  });

  it('writes the same bytes for the same graph and ranges, and names a missing range', async () => {
    const ranges = await calibrate();
    const dirs = [0, 1].map((i) => fs.mkdtempSync(path.join(tmp, `det${i}-`)));
    for (const d of dirs) {
      const g = build();
      quantizeGraphInt8(g, ranges);
      await writeModel(g, d, 'q');
    }
    for (const f of ['q.onnx', 'q.onnx.data']) assert.ok(fs.readFileSync(path.join(dirs[0], f)).equals(fs.readFileSync(path.join(dirs[1], f))), f);
    const partial = new Map(ranges);
    partial.delete('x');
    assert.throws(() => quantizeGraphInt8(build(), partial), /no finite calibrated range for x in int8/);
    assert.equal(rangeName('v', 'min'), 'v::min');
  });
});

describe('onnx/int8 sites', () => {
  it('keeps float32 the convs with 8 channels or fewer in or out, and the MatMuls over fewer than 256 calibrated rows', () => {
    const z = (shape: number[]) => ({ shape, data: new Array(shape.reduce((a, b) => a * b, 1)).fill(0.5) });
    const g = new Graph('keep', memoryWeights({ 'a.weight': z([16, 4, 3, 3]), 'a.bias': z([16]), 'b.weight': z([16, 16, 3, 3]), 'b.bias': z([16]), 'c.weight': z([8, 16, 3, 3]), 'c.bias': z([8]), 'p.weight': z([16, 16]), 'p.bias': z([16]), 'q.weight': z([16, 16]), 'q.bias': z([16]) }));
    const x = g.input('x', 'float32', [1, 4, 8, 8]);
    g.output(g.conv2d(g.conv2d(g.conv2d(x, 'a'), 'b'), 'c'), 'y', [1, 8, 8, 8]);
    const s = g.input('s', 'float32', ['rows', 16]);
    const t = g.input('t', 'float32', ['rows2', 16]);
    g.output(g.linear(s, 'p'), 'ps', ['rows', 16]);
    g.output(g.linear(t, 'q'), 'qt', ['rows2', 16]);
    const sites = int8Sites(g);
    assert.deepEqual(sites.map((x) => [x.kind, x.node.opType]), [['conv', 'Conv'], ['matmul', 'FusedMatMul'], ['matmul', 'FusedMatMul']]);
    // A linear layer's site is a MatMul on W^T: its stored [out, in] weight viewed transposed.
    assert.deepEqual(sites[1].weight.weight, { key: 'p.weight', view: { transpose: true } });
    const ranges = new Map<string, Range>(sites.flatMap((x) => [[x.x, { min: -1, max: 1 }], [x.y, { min: -1, max: 1 }]] as [string, Range][]));
    ranges.get('s')!.size = 256 * 16;
    ranges.get('t')!.size = 77 * 16;
    assert.deepEqual(quantizeGraphInt8(g, ranges), { convs: 1, matmuls: 1 });
    const kept = g.nodes.filter((n) => ['Conv', 'MatMul', 'FusedMatMul'].includes(n.opType) && !n.inputs[1].endsWith('w_dq')).map((n) => n.name);
    assert.deepEqual(kept, ['/a/Conv', '/c/Conv', '/q/FusedMatMul']);
    const int8 = g.nodes.filter((n) => n.inputs[1]?.endsWith('w_dq')).map((n) => [n.name, n.opType, n.domain]);
    assert.deepEqual(int8, [['/b/Conv', 'Conv', ''], ['/p/FusedMatMul', 'MatMul', '']]);
  });
});

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * ORT requantizes the int32 accumulator with a float32 multiplier (sx * sw / sy), the reference in float64: a value
 * within float32 error of a rounding boundary may land one output step either side, nothing more. So: every value
 * within one step (scale) of the reference, and at most 1% of them off at all.
 */
function checkSteps(actual: Float32Array, ref: Float64Array, step: number, what: string): void {
  assert.equal(actual.length, ref.length);
  let off = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(actual[i] - ref[i]);
    assert.ok(d <= step * 1.001 + 1e-6, `${what}[${i}]: ${actual[i]} vs ${ref[i]} (step ${step})`);
    if (d > step * 1e-3 + 1e-6) off++;
  }
  assert.ok(off <= ref.length * 0.01, `${what}: ${off} of ${ref.length} values off by a step`);
}
