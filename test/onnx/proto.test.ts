import assert from 'node:assert/strict';
import protobuf from 'protobufjs';
import { encodeModel, type ModelProtoData } from '../../src/onnx/proto.js';

// The subset of onnx/onnx.proto that onestep emits, decoded by an independent protobuf implementation.
const ONNX_SUBSET = `
syntax = "proto2";
package onnx;
message StringStringEntryProto { optional string key = 1; optional string value = 2; }
message AttributeProto { optional string name = 1; optional float f = 2; optional int64 i = 3; optional bytes s = 4;
  optional TensorProto t = 5; repeated float floats = 7; repeated int64 ints = 8; optional int32 type = 20; }
message NodeProto { repeated string input = 1; repeated string output = 2; optional string name = 3; optional string op_type = 4;
  repeated AttributeProto attribute = 5; optional string domain = 7; }
message TensorProto { repeated int64 dims = 1; optional int32 data_type = 2; optional string name = 8; optional bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13; optional int32 data_location = 14; }
message TensorShapeProto { message Dimension { optional int64 dim_value = 1; optional string dim_param = 2; } repeated Dimension dim = 1; }
message TypeProto { message Tensor { optional int32 elem_type = 1; optional TensorShapeProto shape = 2; } optional Tensor tensor_type = 1; }
message ValueInfoProto { optional string name = 1; optional TypeProto type = 2; }
message GraphProto { repeated NodeProto node = 1; optional string name = 2; repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11; repeated ValueInfoProto output = 12; }
message OperatorSetIdProto { optional string domain = 1; optional int64 version = 2; }
message ModelProto { optional int64 ir_version = 1; optional string producer_name = 2; optional string producer_version = 3;
  optional GraphProto graph = 7; repeated OperatorSetIdProto opset_import = 8; repeated StringStringEntryProto metadata_props = 14; }
`;

describe('onnx/proto', () => {
  it('encodes a ModelProto that an independent protobuf decoder reads back field for field', () => {
    const model: ModelProtoData = {
      irVersion: 10,
      producerName: 'onestep',
      producerVersion: '1',
      opsets: [{ domain: '', version: 21 }, { domain: 'com.microsoft', version: 1 }],
      graph: {
        name: 'g',
        nodes: [
          {
            name: '/a/Conv',
            opType: 'Conv',
            domain: '',
            inputs: ['x', 'w', ''],
            outputs: ['y'],
            attributes: [
              ['pads', { type: 'ints', value: [1, 1, 1, 1] }],
              ['epsilon', { type: 'float', value: 1e-5 }],
              ['group', { type: 'int', value: -3 }],
              ['mode', { type: 'string', value: 'nearest' }],
              ['scales', { type: 'floats', value: [0.5, 2] }],
            ],
          },
        ],
        initializers: [
          { name: 'w', type: 'float32', dims: [2, 300], external: { location: 'm.onnx.data', offset: 4096, length: 2400 } },
          { name: 'c', type: 'int64', dims: [2], raw: new Uint8Array(16).fill(7) },
        ],
        inputs: [{ name: 'x', type: 'float32', dims: ['batch', 3, 200] }],
        outputs: [{ name: 'y', type: 'float16', dims: [1] }],
      },
      metadata: [['k', 'v']],
    };
    const root = protobuf.parse(ONNX_SUBSET).root;
    const decoded = root.lookupType('onnx.ModelProto').decode(encodeModel(model)).toJSON() as any;
    assert.equal(decoded.irVersion, '10');
    assert.deepEqual(decoded.opsetImport, [{ domain: '', version: '21' }, { domain: 'com.microsoft', version: '1' }]);
    const node = decoded.graph.node[0];
    assert.deepEqual(node.input, ['x', 'w', '']);
    assert.equal(node.opType, 'Conv');
    assert.deepEqual(node.attribute[0], { name: 'pads', ints: ['1', '1', '1', '1'], type: 7 });
    assert.ok(Math.abs(node.attribute[1].f - 1e-5) < 1e-12 && node.attribute[1].type === 1);
    assert.equal(node.attribute[2].i, '-3');
    assert.equal(Buffer.from(node.attribute[3].s, 'base64').toString(), 'nearest');
    assert.deepEqual(node.attribute[4].floats, [0.5, 2]);
    const [w, c] = decoded.graph.initializer;
    assert.deepEqual(w.dims, ['2', '300']);
    assert.equal(w.dataType, 1);
    assert.equal(w.dataLocation, 1);
    assert.deepEqual(w.externalData, [
      { key: 'location', value: 'm.onnx.data' },
      { key: 'offset', value: '4096' },
      { key: 'length', value: '2400' },
    ]);
    assert.equal(c.dataType, 7);
    assert.deepEqual([...Buffer.from(c.rawData, 'base64')], new Array(16).fill(7));
    assert.deepEqual(decoded.graph.input[0].type.tensorType.shape.dim, [{ dimParam: 'batch' }, { dimValue: '3' }, { dimValue: '200' }]);
    assert.equal(decoded.graph.output[0].type.tensorType.elemType, 10);
    assert.deepEqual(decoded.metadataProps, [{ key: 'k', value: 'v' }]);
  });
});
