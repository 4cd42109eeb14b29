//! Export the built-in model as a standard ONNX graph (opset 17, IR 8).
//!
//! The signature is that of an `optimum`/`torch.onnx` export of a Hugging
//! Face causal LM — inputs `input_ids` and `attention_mask` (int64, dynamic
//! batch and sequence), output `logits` [batch, sequence, vocab] — so the
//! distributions stage treats built-in and external checkpoints alike.
//! GELU is written as `0.5·x·(1 + erf(x/√2))` because the `Gelu` operator
//! needs opset 20.

use prost::Message;

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::config::Objective;
use crate::lm::model::{causal_mask_values, Shape, Weights, LN_EPS, MASK};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

pub(super) struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    n: usize,
}

pub(super) fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}
fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}
pub(super) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

impl Graph {
    pub(super) fn new() -> Graph {
        Graph {
            nodes: Vec::new(),
            inits: Vec::new(),
            n: 0,
        }
    }
    pub(super) fn finish(self) -> (Vec<NodeProto>, Vec<TensorProto>) {
        (self.nodes, self.inits)
    }
    /// Add a node with one output; returns the output name.
    pub(super) fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.n += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.n);
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("n{}", self.n)),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }
    pub(super) fn op_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        self.n += 1;
        self.nodes.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("n{}", self.n)),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }
    pub(super) fn f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(
                data.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        });
        name.to_string()
    }
    pub(super) fn i64(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            dims: vec![data.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(
                data.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        });
        name.to_string()
    }
    fn linear(&mut self, x: &str, w: &str, b: &str) -> String {
        let m = self.op("MatMul", &[x, w], vec![]);
        self.op("Add", &[&m, b], vec![])
    }
    fn layer_norm(&mut self, x: &str, w: &str, b: &str) -> String {
        self.op(
            "LayerNormalization",
            &[x, w, b],
            vec![attr_int("axis", -1), attr_float("epsilon", LN_EPS as f32)],
        )
    }
}

pub(super) fn io(name: &str, elem: DataType, dims: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(match d.parse::<i64>() {
                                Ok(v) => tensor_shape_proto::dimension::Value::DimValue(v),
                                Err(_) => {
                                    tensor_shape_proto::dimension::Value::DimParam(d.to_string())
                                }
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Build the ONNX model for `shape` with weights `w` (a causal LM).
pub fn build(shape: &Shape, w: &Weights) -> ModelProto {
    build_for(shape, w, Objective::Causal)
}

/// A causal LM, or a masked LM: no causal mask, and the BERT signature
/// (`token_type_ids` accepted, unused: one segment).
pub fn build_for(shape: &Shape, w: &Weights, objective: Objective) -> ModelProto {
    let mlm = objective == Objective::Mlm;
    let mut g = Graph {
        nodes: Vec::new(),
        inits: Vec::new(),
        n: 0,
    };
    for (name, (dims, data)) in w {
        g.f32(name, dims, data);
    }
    let (d, h, hd) = (shape.d_model, shape.heads, shape.head_dim());
    let c = shape.context;
    let mask_values = if mlm {
        vec![0.0; c * c]
    } else {
        causal_mask_values(c)
    };
    g.f32("causal_mask", &[c, c], &mask_values);
    g.f32("one", &[], &[1.0]);
    g.f32("half", &[], &[0.5]);
    g.f32("sqrt2", &[], &[std::f32::consts::SQRT_2]);
    g.f32("mask_value", &[], &[MASK]);
    g.f32("scale", &[], &[1.0 / (hd as f32).sqrt()]);
    g.i64("c_0", &[0]);
    g.i64("c_1", &[1]);
    g.i64("c_2", &[2]);
    g.i64("c_00", &[0, 0]);
    g.i64("c_01", &[0, 1]);
    g.i64("c_12", &[1, 2]);
    g.i64("split_qkv", &[d as i64, d as i64, d as i64]);
    g.i64("shape_bthd", &[0, 0, h as i64, hd as i64]);
    g.i64("shape_btd", &[0, 0, d as i64]);

    // Embeddings and positions 0..T.
    let x0 = g.op("Gather", &["wte", "input_ids"], vec![attr_int("axis", 0)]);
    let shp = g.op("Shape", &["input_ids"], vec![]);
    let t = g.op("Slice", &[&shp, "c_1", "c_2"], vec![]);
    let pos = g.op("Slice", &["wpe", "c_0", &t, "c_0"], vec![]);
    let mut x = g.op("Add", &[&x0, &pos], vec![]);

    // Attention bias [B, 1, T, T]: causal part plus padded keys.
    let tt = g.op("Concat", &[&t, &t], vec![attr_int("axis", 0)]);
    let causal = g.op("Slice", &["causal_mask", "c_00", &tt, "c_01"], vec![]);
    let m = g.op(
        "Cast",
        &["attention_mask"],
        vec![attr_int("to", DataType::Float as i64)],
    );
    let inv = g.op("Sub", &["one", &m], vec![]);
    let pad = g.op("Mul", &[&inv, "mask_value"], vec![]);
    let pad = g.op("Unsqueeze", &[&pad, "c_12"], vec![]);
    let bias = g.op("Add", &[&causal, &pad], vec![]);

    for i in 0..shape.layers {
        let n = |k: &str| format!("h.{i:02}.{k}");
        let a = g.layer_norm(&x, &n("ln1.w"), &n("ln1.b"));
        let qkv = g.linear(&a, &n("attn.qkv.w"), &n("attn.qkv.b"));
        let (q, k, v) = (format!("q_{i}"), format!("k_{i}"), format!("v_{i}"));
        g.op_outputs(
            "Split",
            &[&qkv, "split_qkv"],
            &[&q, &k, &v],
            vec![attr_int("axis", 2)],
        );
        let q = g.op("Reshape", &[&q, "shape_bthd"], vec![]);
        let q = g.op("Transpose", &[&q], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let k = g.op("Reshape", &[&k, "shape_bthd"], vec![]);
        let k = g.op("Transpose", &[&k], vec![attr_ints("perm", &[0, 2, 3, 1])]);
        let v = g.op("Reshape", &[&v, "shape_bthd"], vec![]);
        let v = g.op("Transpose", &[&v], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let s = g.op("MatMul", &[&q, &k], vec![]);
        let s = g.op("Mul", &[&s, "scale"], vec![]);
        let s = g.op("Add", &[&s, &bias], vec![]);
        let p = g.op("Softmax", &[&s], vec![attr_int("axis", -1)]);
        let y = g.op("MatMul", &[&p, &v], vec![]);
        let y = g.op("Transpose", &[&y], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let y = g.op("Reshape", &[&y, "shape_btd"], vec![]);
        let y = g.linear(&y, &n("attn.out.w"), &n("attn.out.b"));
        x = g.op("Add", &[&x, &y], vec![]);

        let a = g.layer_norm(&x, &n("ln2.w"), &n("ln2.b"));
        let f = g.linear(&a, &n("mlp.fc.w"), &n("mlp.fc.b"));
        let e = g.op("Div", &[&f, "sqrt2"], vec![]);
        let e = g.op("Erf", &[&e], vec![]);
        let e = g.op("Add", &[&e, "one"], vec![]);
        let f = g.op("Mul", &[&f, &e], vec![]);
        let f = g.op("Mul", &[&f, "half"], vec![]);
        let f = g.linear(&f, &n("mlp.proj.w"), &n("mlp.proj.b"));
        x = g.op("Add", &[&x, &f], vec![]);
    }
    let x = g.layer_norm(&x, "ln_f.w", "ln_f.b");
    g.op_outputs("MatMul", &[&x, "unembed.w"], &["logits"], vec![]);

    let mut input = vec![
        io(
            "input_ids",
            DataType::Int64,
            &["batch_size", "sequence_length"],
        ),
        io(
            "attention_mask",
            DataType::Int64,
            &["batch_size", "sequence_length"],
        ),
    ];
    if mlm {
        input.push(io(
            "token_type_ids",
            DataType::Int64,
            &["batch_size", "sequence_length"],
        ));
    }
    let graph = GraphProto {
        name: Some(if mlm { "seedconv_mlm" } else { "seedconv_gpt" }.into()),
        node: g.nodes,
        initializer: g.inits,
        input,
        output: vec![io(
            "logits",
            DataType::Float,
            &[
                "batch_size",
                "sequence_length",
                &shape.vocab_padded.to_string(),
            ],
        )],
        ..Default::default()
    };
    model_proto(graph)
}

/// A model of one graph at this module's opset, produced by seedconv.
pub(super) fn model_proto(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("seedconv".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    }
}

/// Serialized ONNX bytes of a causal LM.
pub fn to_bytes(shape: &Shape, w: &Weights) -> Vec<u8> {
    build(shape, w).encode_to_vec()
}

/// Serialized ONNX bytes for either objective.
pub fn to_bytes_for(shape: &Shape, w: &Weights, objective: Objective) -> Vec<u8> {
    build_for(shape, w, objective).encode_to_vec()
}
