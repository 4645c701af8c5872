//! Writes a small sample sync file (users, nested groups with a cycle, an app with an assignment held
//! through a group) — handy for trying `steward inspect` / `steward diff` and the `baton` CLI.
//!
//! `cargo run -p steward-c1z --example sample -- sample.c1z [--variant]` (`--variant` removes one member
//! and renames one group, to have something to diff).

use steward_c1z::{C1zWriter, SyncType};
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::{AppTrait, profile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "sample.c1z".into());
    let variant = args.next().is_some_and(|a| a == "--variant");
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let at = builders::resource_type("enterprise_application", "Enterprise application", &[Trait::App]);
    let users: Vec<_> = ["ada", "grace", "alan"]
        .iter()
        .map(|n| {
            ResourceBuilder::new("user", n, &format!("{n} example"))
                .profile(profile::strings([
                    ("first_name", *n),
                    ("last_name", "Example"),
                    ("user_id", *n),
                ]))
                .user(builders::user_trait(
                    Some(&format!("{n}@contoso.example")),
                    true,
                    n,
                ))
                .build()
        })
        .collect();
    let names = [
        "engineering",
        if variant { "platform-team" } else { "platform" },
        "everyone",
    ];
    let groups: Vec<_> = ["g-eng", "g-plat", "g-all"]
        .iter()
        .zip(names)
        .map(|(id, name)| ResourceBuilder::new("group", id, name).group().build())
        .collect();
    let app = ResourceBuilder::new("enterprise_application", "app-1", "Payroll")
        .app(AppTrait {
            help_url: "https://payroll.example".into(),
            ..Default::default()
        })
        .build();
    let member: Vec<_> = groups
        .iter()
        .map(|g| {
            builders::entitlement(
                g,
                "member",
                "Member",
                PurposeValue::Assignment,
                &[ut.clone(), gt.clone()],
            )
        })
        .collect();
    let assignment = builders::entitlement(
        &app,
        "assignment:default",
        "Default access",
        PurposeValue::Assignment,
        &[ut.clone(), gt.clone()],
    );

    let mut w = C1zWriter::open(&path)?;
    w.begin_sync(SyncType::Full)?;
    for t in [&ut, &gt, &at] {
        w.put_resource_type(t)?;
    }
    for r in users.iter().chain(&groups).chain([&app]) {
        w.put_resource(r)?;
    }
    for e in member.iter().chain([&assignment]) {
        w.put_entitlement(e)?;
    }
    // ada ∈ engineering ⊂ platform ⊂ everyone ⊂ engineering (a cycle); grace ∈ platform; alan ∈ everyone.
    let mut grants = vec![
        builders::grant(&member[0], &users[0]),
        builders::grant(&member[1], &users[1]),
        builders::expandable(builders::grant(&member[1], &groups[0]), &[&member[0].id]),
        builders::expandable(builders::grant(&member[2], &groups[1]), &[&member[1].id]),
        builders::expandable(builders::grant(&member[0], &groups[2]), &[&member[2].id]),
        builders::expandable(builders::grant(&assignment, &groups[1]), &[&member[1].id]),
    ];
    if !variant {
        grants.push(builders::grant(&member[2], &users[2]));
    }
    for g in &grants {
        w.put_grant(g)?;
    }
    let rep = w.end_sync()?;
    w.finish()?;
    println!(
        "wrote {path}: sync {} ({} grants from expansion)",
        rep.sync_id, rep.expansion.grants_created
    );
    Ok(())
}
