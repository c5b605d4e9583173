//! Building etcd transaction requests and reading their answers.

use weir_proto::etcd::etcdserverpb::{self as pb, compare, request_op};

/// The key does not exist.
pub(super) fn absent(key: &[u8]) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    }
}

/// No key in `key..range_end` (or `key` alone) was written after `revision`. A key that did not
/// exist compares as revision 0, so one created since fails the check too.
pub(super) fn unchanged_since(key: &[u8], range_end: Vec<u8>, revision: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(revision + 1)),
        range_end,
    }
}

/// The key holds exactly `value`.
pub(super) fn holds(key: &[u8], value: &[u8]) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::Value(value.to_vec())),
        range_end: Vec::new(),
    }
}

pub(super) fn put_op(key: &[u8], value: &[u8]) -> pb::RequestOp {
    put_leased_op(key, value, 0)
}

/// A put that lives under `lease` (0: none).
pub(super) fn put_leased_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub(super) fn delete_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

pub(super) fn range_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The value read by the first range operation of a transaction's answer.
pub(super) fn first_value(response: pb::TxnResponse) -> Option<Vec<u8>> {
    use pb::response_op::Response;
    response
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(Response::ResponseRange(range)) => range.kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        })
}
