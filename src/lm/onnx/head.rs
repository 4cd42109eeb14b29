//! The unembedding applied only to the positions a run reads. A causal LM
//! computes logits at every position of a window, but with stride W/2 the
//! dist and kl stages read only the second half of each window (a masked LM
//! one position per copy), and the unembedding (d × vocabulary) is most of
//! a small model's arithmetic at a 50k vocabulary. At load time the graph
//! gets an input [`ROWS`] of flat positions (shape [1, R]; batch index ×
//! sequence length plus position) and its last hidden states are gathered to
//! them before the unembedding's MatMul: `logits` becomes [1, R, width],
//! the same rows as gathering the full output, computed the same way.
//!
//! Only a recognised tail is edited: `logits` produced by a MatMul with a
//! constant weight, through row-wise operations with constant operands of
//! rank ≤ 1 (a bias, a scale, a Cast). Any other graph is left as it is.

use std::collections::{HashMap, HashSet};

use super::export::{attr_int, io};
use super::proto::tensor_shape_proto::dimension::Value::{DimParam, DimValue};
use super::proto::type_proto::Value;
use super::proto::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};

/// The input the edited graph takes: int64 [1, R] flat positions.
pub const ROWS: &str = "seedconv_rows";
const FLAT: &str = "seedconv_hidden_flat";
const READ: &str = "seedconv_hidden_read";
/// The symbolic dimension R.
const READ_ROWS: &str = "seedconv_read_rows";

/// Edit `model` so that its `logits` are computed at [`ROWS`] only;
/// returns whether it did (false: the graph is unchanged).
pub fn prune(model: &mut ModelProto) -> bool {
    let Some(g) = model.graph.as_mut() else {
        return false;
    };
    let Some((head, chain)) = find_head(g) else {
        return false;
    };
    let hidden = g.node[head].input[0].clone();
    let node = |op: &str, inputs: &[&str], out: &str, axis: i64| NodeProto {
        op_type: Some(op.into()),
        name: Some(out.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute: vec![attr_int("axis", axis)],
        ..Default::default()
    };
    // [B, T, d] → [B·T, d] → Gather with indices [1, R] → [1, R, d].
    g.node[head].input[0] = READ.into();
    g.node.splice(
        head..head,
        [
            node("Flatten", &[&hidden], FLAT, 2),
            node("Gather", &[FLAT, ROWS], READ, 0),
        ],
    );
    g.input.push(io(ROWS, DataType::Int64, &["1", READ_ROWS]));
    // Shapes recorded for the edited tensors no longer hold.
    g.value_info
        .retain(|v| !chain.contains(v.name.as_deref().unwrap_or("")));
    // logits: [1, R, width] (its element type and width as declared).
    for o in g
        .output
        .iter_mut()
        .filter(|o| o.name.as_deref() == Some("logits"))
    {
        if let Some(Value::TensorType(t)) = o.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(s) = t.shape.as_mut().filter(|s| s.dim.len() == 3) {
                s.dim[0].value = Some(DimValue(1));
                s.dim[1].value = Some(DimParam(READ_ROWS.into()));
            }
        }
    }
    true
}

/// The index of the unembedding's MatMul and the tensors from its output to
/// `logits`, where the tail is the recognised one.
fn find_head(g: &GraphProto) -> Option<(usize, HashSet<String>)> {
    let names = |v: &[String]| v.iter().any(|n| [ROWS, FLAT, READ].contains(&n.as_str()));
    if g.node.iter().any(|n| names(&n.output))
        || g.input.iter().any(|i| i.name.as_deref() == Some(ROWS))
    {
        return None;
    }
    // Rank of each constant: initializers, Constant nodes, and outputs of
    // nodes whose inputs are all constant (nodes are in topological order).
    let mut rank: HashMap<&str, Option<usize>> = g
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, Some(t.dims.len()))))
        .collect();
    let inputs: HashSet<&str> = g.input.iter().filter_map(|i| i.name.as_deref()).collect();
    rank.retain(|k, _| !inputs.contains(k)); // an overridable initializer is an input
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or("");
        if op == "Constant" {
            let t: Option<&TensorProto> = n.attribute.iter().find_map(|a| a.t.as_ref());
            for o in &n.output {
                rank.insert(o, t.map(|t| t.dims.len()));
            }
        } else if !n.input.is_empty()
            && n.input
                .iter()
                .all(|i| i.is_empty() || rank.contains_key(i.as_str()))
        {
            for o in &n.output {
                rank.insert(o, None);
            }
        }
    }
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for o in &g.output {
        *uses.entry(o.name.as_deref().unwrap_or("")).or_default() += 1;
    }
    let mut chain = HashSet::new();
    let mut cur = "logits";
    loop {
        let &i = producer.get(cur)?;
        let n = &g.node[i];
        // Each edited tensor feeds only the next step (logits: the output).
        if n.output.len() != 1 || uses.get(cur) != Some(&1) {
            return None;
        }
        chain.insert(cur.to_string());
        let var: Vec<&String> = n
            .input
            .iter()
            .filter(|x| !rank.contains_key(x.as_str()))
            .collect();
        let [x] = var[..] else {
            return None;
        };
        let small = n
            .input
            .iter()
            .filter(|v| *v != x)
            .all(|v| matches!(rank.get(v.as_str()), Some(Some(r)) if *r <= 1));
        match n.op_type.as_deref().unwrap_or("") {
            // A 2-D weight (or one computed from constants, e.g. a tied
            // embedding transposed): the hidden states then are [B, T, d].
            "MatMul"
                if n.input.len() == 2
                    && &n.input[0] == x
                    && matches!(rank.get(n.input[1].as_str()), Some(Some(2) | None)) =>
            {
                return Some((i, chain))
            }
            "Add" | "Sub" | "Mul" | "Div" if small => cur = x,
            "Cast" | "Identity" | "Tanh" if n.input.len() == 1 => cur = x,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::onnx::export;
    use prost::Message;

    fn load(p: &str) -> ModelProto {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        ModelProto::decode(bytes::Bytes::from(std::fs::read(root.join(p)).unwrap())).unwrap()
    }

    #[test]
    fn prunes_the_shipped_exports_and_the_builtin_one() {
        for p in [
            "tests/fixtures/hf_onnx_samples/causal/neox-seed11/step0/model.onnx",
            "tests/fixtures/hf_onnx_samples/causal/variants/dynamo-external-data/model.onnx",
            "tests/fixtures/hf_onnx_samples/mlm/bert-seed21/step0/model.onnx",
        ] {
            let mut m = load(p);
            let before = m.graph.as_ref().unwrap().node.len();
            assert!(prune(&mut m), "{p}");
            let g = m.graph.as_ref().unwrap();
            assert_eq!(g.node.len(), before + 2, "{p}");
            assert!(g.input.iter().any(|i| i.name.as_deref() == Some(ROWS)));
            // A second edit is refused (the names are taken).
            assert!(!prune(&mut m), "{p}");
        }
        let shape = crate::lm::model::Shape {
            vocab: 50,
            vocab_padded: 64,
            layers: 1,
            d_model: 8,
            heads: 2,
            context: 16,
        };
        let mut m =
            ModelProto::decode(bytes::Bytes::from(export::to_bytes(&shape, &shape.init(1))))
                .unwrap();
        assert!(prune(&mut m));
    }

    /// The neox export and the index of the node producing its logits.
    fn neox() -> (ModelProto, usize) {
        let m = load("tests/fixtures/hf_onnx_samples/causal/neox-seed11/step0/model.onnx");
        let nodes = &m.graph.as_ref().unwrap().node;
        let i = nodes
            .iter()
            .position(|n| n.output.iter().any(|o| o == "logits"));
        (m, i.unwrap())
    }

    #[test]
    fn leaves_an_unrecognised_tail_alone() {
        // logits = Softmax(MatMul(x, w)): not row-wise-with-constants.
        let (mut m, i) = neox();
        let g = m.graph.as_mut().unwrap();
        g.node[i].output[0] = "pre".into();
        g.node.push(NodeProto {
            op_type: Some("Softmax".into()),
            input: vec!["pre".into()],
            output: vec!["logits".into()],
            ..Default::default()
        });
        let before = m.clone();
        assert!(!prune(&mut m));
        assert_eq!(m, before);
        // A weight of rank 3 (MatMul broadcasting over a batch of weights).
        let (mut m, i) = neox();
        let g = m.graph.as_mut().unwrap();
        let w = g.node[i].input[1].clone();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name.as_deref() == Some(w.as_str()))
            .unwrap();
        t.dims.insert(0, 1);
        assert!(!prune(&mut m));
    }
}
