//! Golden-bytes tests: each message is encoded and compared with bytes derived BY HAND from the spec's
//! field table (tag byte = field_number << 3 | wire_type; wire types 0 = varint, 2 = length-delimited).
//! The helpers below only concatenate; every tag byte is written out literally with its derivation.

use prost::Message;
use prost_types::{Any, Struct, Timestamp, Value, value::Kind};

use crate::pb::*;

/// Length-delimited field: tag, one-byte length (all test bodies are < 128 bytes), body.
fn ld(tag: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![tag, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn profile_a_b() -> Struct {
    Struct {
        fields: [(
            "a".to_owned(),
            Value {
                kind: Some(Kind::StringValue("b".into())),
            },
        )]
        .into(),
    }
}

/// Struct{"a": "b"}: fields=1 (0x0A) map entry {key=1 (0x0A) "a", value=2 (0x12) Value{string_value=3 (0x1A) "b"}}.
fn profile_a_b_bytes() -> Vec<u8> {
    ld(0x0A, &cat(&[&ld(0x0A, b"a"), &ld(0x12, &ld(0x1A, b"b"))]))
}

#[test]
fn resource_id() {
    let m = ResourceId {
        resource_type: "user".into(),
        resource: "7".into(),
        baton_resource: true,
    };
    // 1:string 0x0A, 2:string 0x12, 3:bool 0x18
    let want = [0x0A, 4, b'u', b's', b'e', b'r', 0x12, 1, b'7', 0x18, 1];
    assert_eq!(m.encode_to_vec(), want);
}

#[test]
fn resource_type() {
    let m = ResourceType {
        id: "group".into(),
        display_name: "Group".into(),
        traits: vec![2, 1],
        annotations: vec![Any {
            type_url: "t".into(),
            value: vec![1],
        }],
        description: "d".into(),
        sourced_externally: true,
    };
    let want = cat(&[
        &ld(0x0A, b"group"),                                  // 1 id
        &ld(0x12, b"Group"),                                  // 2 display_name
        &[0x1A, 2, 2, 1],                                     // 3 traits, packed varints
        &ld(0x22, &cat(&[&ld(0x0A, b"t"), &ld(0x12, &[1])])), // 4 Any{type_url=1, value=2}
        &ld(0x2A, b"d"),                                      // 5 description
        &[0x30, 1],                                           // 6 sourced_externally
    ]);
    assert_eq!(m.encode_to_vec(), want);
}

#[test]
fn resource_all_fields() {
    let m = Resource {
        id: Some(ResourceId {
            resource_type: "u".into(),
            resource: "1".into(),
            baton_resource: false,
        }),
        parent_resource_id: Some(ResourceId {
            resource_type: "p".into(),
            resource: "2".into(),
            baton_resource: false,
        }),
        display_name: "N".into(),
        annotations: vec![Any {
            type_url: "x".into(),
            value: vec![],
        }],
        description: "D".into(),
        baton_resource: true,
        external_id: Some(ExternalId {
            id: "e".into(),
            link: String::new(),
            description: String::new(),
        }),
        creation_source: 1,
        profile: Some(profile_a_b()),
        icon: Some(AssetRef { id: "i".into() }),
        status: Some(resource::Status {
            status: 2,
            details: "z".into(),
        }),
        created_at: Some(Timestamp { seconds: 1, nanos: 0 }),
    };
    let want = cat(&[
        &ld(0x0A, &cat(&[&ld(0x0A, b"u"), &ld(0x12, b"1")])), // 1 id
        &ld(0x12, &cat(&[&ld(0x0A, b"p"), &ld(0x12, b"2")])), // 2 parent_resource_id
        &ld(0x1A, b"N"),                                      // 3 display_name
        &ld(0x22, &ld(0x0A, b"x")),                           // 4 annotations (empty value omitted)
        &ld(0x2A, b"D"),                                      // 5 description
        &[0x30, 1],                                           // 6 baton_resource
        &ld(0x3A, &ld(0x0A, b"e")),                           // 7 external_id
        &[0x40, 1],                                           // 8 creation_source
        &ld(0x4A, &profile_a_b_bytes()),                      // 9 profile
        &ld(0x52, &ld(0x0A, b"i")),                           // 10 icon
        &ld(0x5A, &cat(&[&[0x08, 2], &ld(0x12, b"z")])),      // 11 status{status=1, details=2}
        &ld(0x62, &[0x08, 1]),                                // 12 created_at{seconds=1}
    ]);
    assert_eq!(m.encode_to_vec(), want);
}

#[test]
fn entitlement_and_grant() {
    let res = Resource {
        id: Some(ResourceId {
            resource_type: "g".into(),
            resource: "1".into(),
            baton_resource: false,
        }),
        ..Default::default()
    };
    let res_bytes = ld(0x0A, &cat(&[&ld(0x0A, b"g"), &ld(0x12, b"1")]));
    let e = Entitlement {
        resource: Some(res.clone()),
        id: "g:1:m".into(),
        display_name: "M".into(),
        description: "d".into(),
        grantable_to: vec![ResourceType {
            id: "u".into(),
            ..Default::default()
        }],
        annotations: vec![Any {
            type_url: "y".into(),
            value: vec![],
        }],
        purpose: 1,
        slug: "m".into(),
    };
    let e_bytes = cat(&[
        &ld(0x0A, &res_bytes),      // 1 resource
        &ld(0x12, b"g:1:m"),        // 2 id
        &ld(0x1A, b"M"),            // 3 display_name
        &ld(0x22, b"d"),            // 4 description
        &ld(0x2A, &ld(0x0A, b"u")), // 5 grantable_to[ResourceType{id}]
        &ld(0x32, &ld(0x0A, b"y")), // 6 annotations
        &[0x38, 1],                 // 7 purpose = ASSIGNMENT
        &ld(0x42, b"m"),            // 8 slug
    ]);
    assert_eq!(e.encode_to_vec(), e_bytes);

    let principal = Resource {
        id: Some(ResourceId {
            resource_type: "u".into(),
            resource: "2".into(),
            baton_resource: false,
        }),
        ..Default::default()
    };
    let p_bytes = ld(0x0A, &cat(&[&ld(0x0A, b"u"), &ld(0x12, b"2")]));
    let g = Grant {
        entitlement: Some(e),
        principal: Some(principal),
        id: "g:1:m:u:2".into(),
        annotations: vec![Any {
            type_url: "z".into(),
            value: vec![],
        }],
        sources: Some(GrantSources {
            sources: [
                ("b".to_owned(), grant_sources::GrantSource { is_direct: false }),
                ("a".to_owned(), grant_sources::GrantSource { is_direct: true }),
            ]
            .into(),
        }),
    };
    // GrantSources.sources=1 (0x0A), one entry per key in key order: {key=1 0x0A, value=2 0x12 GrantSource{is_direct=1 0x08}}.
    // A map entry whose value is the default (is_direct=false) omits the value field, which proto3 decoders
    // (Go's included) read as the default.
    let sources = cat(&[
        &ld(0x0A, &cat(&[&ld(0x0A, b"a"), &ld(0x12, &[0x08, 1])])),
        &ld(0x0A, &ld(0x0A, b"b")),
    ]);
    let want = cat(&[
        &ld(0x0A, &e_bytes),        // 1 entitlement
        &ld(0x12, &p_bytes),        // 2 principal
        &ld(0x1A, b"g:1:m:u:2"),    // 3 id
        &ld(0x22, &ld(0x0A, b"z")), // 4 annotations
        &ld(0x2A, &sources),        // 5 sources
    ]);
    assert_eq!(g.encode_to_vec(), want);
}

#[test]
fn user_trait() {
    let m = UserTrait {
        emails: vec![user_trait::Email {
            address: "a@b".into(),
            is_primary: true,
        }],
        status: Some(user_trait::Status {
            status: 1,
            details: String::new(),
        }),
        profile: Some(profile_a_b()),
        icon: None,
        account_type: 2,
        login: "l".into(),
        login_aliases: vec!["x".into()],
        created_at: Some(Timestamp { seconds: 3, nanos: 0 }),
        last_login: Some(Timestamp { seconds: 0, nanos: 5 }),
        employee_ids: vec!["e1".into()],
    };
    let want = cat(&[
        &ld(0x0A, &cat(&[&ld(0x0A, b"a@b"), &[0x10, 1]])), // 1 emails{address=1, is_primary=2 (0x10)}
        &ld(0x12, &[0x08, 1]),                             // 2 status{status=1 ENABLED}
        &ld(0x1A, &profile_a_b_bytes()),                   // 3 profile
        &[0x28, 2],                                        // 5 account_type SERVICE (5<<3|0 = 0x28)
        &ld(0x32, b"l"),                                   // 6 login
        &ld(0x3A, b"x"),                                   // 7 login_aliases
        &ld(0x42, &[0x08, 3]),                             // 8 created_at{seconds=3}
        &ld(0x4A, &[0x10, 5]),                             // 9 last_login{nanos=5 (2<<3|0 = 0x10)}
        &ld(0x6A, b"e1"),                                  // 13 employee_ids (13<<3|2 = 106 = 0x6A)
    ]);
    assert_eq!(m.encode_to_vec(), want);
}

#[test]
fn group_role_app_traits() {
    let g = GroupTrait {
        icon: None,
        profile: Some(profile_a_b()),
    };
    assert_eq!(g.encode_to_vec(), ld(0x12, &profile_a_b_bytes())); // profile = 2
    let r = RoleTrait {
        profile: Some(profile_a_b()),
    };
    assert_eq!(r.encode_to_vec(), ld(0x0A, &profile_a_b_bytes())); // profile = 1
    let a = AppTrait {
        help_url: "h".into(),
        icon: None,
        logo: None,
        profile: Some(profile_a_b()),
        flags: vec![2, 3],
    };
    let want = cat(&[
        &ld(0x0A, b"h"),                 // 1 help_url
        &ld(0x22, &profile_a_b_bytes()), // 4 profile (4<<3|2 = 0x22)
        &[0x2A, 2, 2, 3],                // 5 flags, packed
    ]);
    assert_eq!(a.encode_to_vec(), want);
}

#[test]
fn annotation_messages() {
    let ge = GrantExpandable {
        entitlement_ids: vec!["a".into(), "b".into()],
        shallow: true,
        resource_type_ids: vec!["u".into()],
    };
    let want = cat(&[&ld(0x0A, b"a"), &ld(0x0A, b"b"), &[0x10, 1], &ld(0x1A, b"u")]);
    assert_eq!(ge.encode_to_vec(), want);

    let gi = GrantImmutable {
        source_id: "s".into(),
        metadata: Some(profile_a_b()),
    };
    assert_eq!(
        gi.encode_to_vec(),
        cat(&[&ld(0x0A, b"s"), &ld(0x12, &profile_a_b_bytes())])
    );
    let ei = EntitlementImmutable {
        source_id: "s".into(),
        metadata: None,
    };
    assert_eq!(ei.encode_to_vec(), ld(0x0A, b"s"));
    assert_eq!(GrantImmutable::default().encode_to_vec(), Vec::<u8>::new());
    assert_eq!(
        ChildResourceType {
            resource_type_id: "c".into()
        }
        .encode_to_vec(),
        ld(0x0A, b"c")
    );
    assert_eq!(SkipEntitlementsAndGrants {}.encode_to_vec(), Vec::<u8>::new());
    assert_eq!(ExternalLink { url: "u".into() }.encode_to_vec(), ld(0x0A, b"u"));
    let rl = RateLimitDescription {
        status: 2,
        limit: 300,
        remaining: 0,
        reset_at: Some(Timestamp { seconds: 1, nanos: 0 }),
    };
    // limit 300 = 0b10_0101100 → varint bytes 0xAC 0x02.
    assert_eq!(
        rl.encode_to_vec(),
        cat(&[&[0x08, 2], &[0x10, 0xAC, 0x02], &ld(0x22, &[0x08, 1])])
    );
}

#[test]
fn decode_what_baton_writes_back() {
    // Unknown fields (a newer SDK) are skipped on decode; our bytes decode to the same value.
    let mut bytes = ld(0x0A, b"group");
    bytes.extend_from_slice(&[0xF8, 0x06, 1]); // field 111, varint: unknown
    let rt = ResourceType::decode(bytes.as_slice()).unwrap();
    assert_eq!(rt.id, "group");
}
