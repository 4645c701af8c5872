//! `google.protobuf.Any` annotations: packing, unpacking and finding them in a message's annotation list.
//!
//! Invariant: every packed Any has the type URL `type.googleapis.com/c1.connector.v2.<Msg>` (or
//! `google.protobuf.<Msg>`), which is what the Go SDK writes and matches on.

use prost::{Message, Name};
use prost_types::Any;

use crate::ModelError;

/// The type URL prefix every Baton annotation uses.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// The type URL of message `M`, e.g. `type.googleapis.com/c1.connector.v2.UserTrait`.
pub fn type_url<M: Name>() -> String {
    format!("{TYPE_URL_PREFIX}{}", M::full_name())
}

/// Packs `msg` into an `Any` with Baton's type URL.
pub fn pack_any<M: Message + Name>(msg: &M) -> Any {
    Any {
        type_url: type_url::<M>(),
        value: msg.encode_to_vec(),
    }
}

/// Unpacks an `Any` into `M`, checking its type URL.
pub fn unpack_any<M: Message + Name + Default>(any: &Any) -> Result<M, ModelError> {
    if !is_type::<M>(any) {
        return Err(ModelError::WrongType {
            expected: type_url::<M>(),
            found: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|source| ModelError::Decode {
        what: M::NAME,
        source,
    })
}

/// Whether `any` holds an `M` (matches on the part after the last `/`, as Go's anypb does).
pub fn is_type<M: Name>(any: &Any) -> bool {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    name == M::full_name()
}

/// Finding, adding and removing annotations in a `Vec<Any>`.
pub trait AnnotationsExt {
    /// The first annotation of type `M`, decoded; `Ok(None)` when there is none.
    fn find<M: Message + Name + Default>(&self) -> Result<Option<M>, ModelError>;
    /// Whether an annotation of type `M` is present.
    fn contains<M: Name>(&self) -> bool;
    /// Appends `msg` packed as an Any.
    fn push_msg<M: Message + Name>(&mut self, msg: &M);
    /// Removes every annotation of type `M` and returns the first one, decoded.
    fn take<M: Message + Name + Default>(&mut self) -> Result<Option<M>, ModelError>;
}

impl AnnotationsExt for Vec<Any> {
    fn find<M: Message + Name + Default>(&self) -> Result<Option<M>, ModelError> {
        self.iter()
            .find(|a| is_type::<M>(a))
            .map(unpack_any::<M>)
            .transpose()
    }

    fn contains<M: Name>(&self) -> bool {
        self.iter().any(|a| is_type::<M>(a))
    }

    fn push_msg<M: Message + Name>(&mut self, msg: &M) {
        self.push(pack_any(msg));
    }

    fn take<M: Message + Name + Default>(&mut self) -> Result<Option<M>, ModelError> {
        let first = self.find::<M>()?;
        self.retain(|a| !is_type::<M>(a));
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GrantExpandable, UserTrait};

    #[test]
    fn type_url_is_batons() {
        assert_eq!(
            type_url::<UserTrait>(),
            "type.googleapis.com/c1.connector.v2.UserTrait"
        );
        assert_eq!(
            type_url::<GrantExpandable>(),
            "type.googleapis.com/c1.connector.v2.GrantExpandable"
        );
    }

    #[test]
    fn pack_find_take() {
        let mut v: Vec<Any> = Vec::new();
        let ge = GrantExpandable {
            entitlement_ids: vec!["group:g:member".into()],
            ..Default::default()
        };
        v.push_msg(&ge);
        v.push_msg(&UserTrait::default());
        assert!(v.contains::<GrantExpandable>());
        assert_eq!(v.find::<GrantExpandable>().unwrap(), Some(ge.clone()));
        assert_eq!(v.take::<GrantExpandable>().unwrap(), Some(ge));
        assert!(!v.contains::<GrantExpandable>());
        assert_eq!(v.len(), 1);
        assert!(unpack_any::<GrantExpandable>(&v[0]).is_err());
    }
}
