//! Graph's JSON for each object: every property the emulator knows, named exactly as in Graph's CSDL
//! (the conformance test checks that), and the default property set Graph returns without `$select`.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::model::*;
use crate::store::{Obj, State};

pub type Obj_ = Map<String, Value>;

/// Properties Graph returns for a user when the request has no `$select`.
pub const USER_DEFAULT: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

/// Properties never returned unless selected.
pub const USER_SELECT_ONLY: &[&str] = &["signInActivity"];

pub fn user(u: &User, with_sign_in: bool) -> Obj_ {
    let synced = u.on_premises_sync_enabled;
    let mut m = Map::with_capacity(32);
    m.insert("id".into(), json!(u.id));
    m.insert("accountEnabled".into(), json!(u.account_enabled));
    m.insert(
        "assignedLicenses".into(),
        Value::Array(
            u.licenses
                .iter()
                .map(|s| json!({"disabledPlans": [], "skuId": s}))
                .collect(),
        ),
    );
    m.insert("businessPhones".into(), json!([]));
    m.insert("city".into(), Value::Null);
    m.insert("companyName".into(), Value::Null);
    m.insert("createdDateTime".into(), json!(u.created));
    m.insert(
        "creationType".into(),
        if u.user_type == UserType::Guest {
            json!("Invitation")
        } else {
            Value::Null
        },
    );
    m.insert("department".into(), json!(u.department));
    m.insert("displayName".into(), json!(u.display_name));
    m.insert("employeeId".into(), json!(u.employee_id));
    m.insert("employeeType".into(), json!(u.employee_type));
    m.insert(
        "externalUserState".into(),
        if u.user_type == UserType::Guest {
            json!("Accepted")
        } else {
            Value::Null
        },
    );
    m.insert("givenName".into(), json!(u.given_name));
    m.insert("jobTitle".into(), json!(u.job_title));
    m.insert("mail".into(), json!(u.mail));
    m.insert(
        "mailNickname".into(),
        json!(
            u.user_principal_name
                .split('@')
                .next()
                .unwrap_or_default()
                .replace('#', "_")
        ),
    );
    m.insert("mobilePhone".into(), Value::Null);
    m.insert("officeLocation".into(), Value::Null);
    m.insert(
        "onPremisesImmutableId".into(),
        if synced {
            json!(base64_of(&u.id))
        } else {
            Value::Null
        },
    );
    m.insert(
        "onPremisesSyncEnabled".into(),
        if synced { json!(true) } else { Value::Null },
    );
    m.insert(
        "onPremisesSamAccountName".into(),
        if synced {
            json!(u.user_principal_name.split('@').next().unwrap_or_default())
        } else {
            Value::Null
        },
    );
    m.insert("preferredLanguage".into(), json!("en-US"));
    m.insert("surname".into(), json!(u.surname));
    m.insert("usageLocation".into(), json!("NL"));
    m.insert("userPrincipalName".into(), json!(u.user_principal_name));
    m.insert(
        "userType".into(),
        json!(if u.user_type == UserType::Guest {
            "Guest"
        } else {
            "Member"
        }),
    );
    if with_sign_in {
        m.insert(
            "signInActivity".into(),
            json!({
                "lastSignInDateTime": u.last_sign_in,
                "lastSignInRequestId": u.last_sign_in.as_ref().map(|_| Uuid::new_v4()),
                "lastNonInteractiveSignInDateTime": u.last_sign_in,
                "lastNonInteractiveSignInRequestId": u.last_sign_in.as_ref().map(|_| Uuid::new_v4()),
                "lastSuccessfulSignInDateTime": u.last_sign_in,
                "lastSuccessfulSignInRequestId": u.last_sign_in.as_ref().map(|_| Uuid::new_v4()),
            }),
        );
    }
    m
}

fn base64_of(id: &Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(id.as_bytes())
}

pub fn group(g: &Group) -> Obj_ {
    let (security, mail_enabled, types): (bool, bool, Vec<&str>) = match g.kind {
        GroupKind::Security => (true, false, vec![]),
        GroupKind::Microsoft365 => (false, true, vec!["Unified"]),
        GroupKind::MailEnabledSecurity => (true, true, vec![]),
        GroupKind::Distribution => (false, true, vec![]),
    };
    let mut types: Vec<&str> = types;
    if g.membership_rule.is_some() {
        types.push("DynamicMembership");
    }
    let nick: String = g
        .display_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    let mut m = Map::with_capacity(24);
    m.insert("id".into(), json!(g.id));
    m.insert("deletedDateTime".into(), Value::Null);
    m.insert("classification".into(), Value::Null);
    m.insert("createdDateTime".into(), json!(g.created));
    m.insert("description".into(), json!(g.description));
    m.insert("displayName".into(), json!(g.display_name));
    m.insert("expirationDateTime".into(), Value::Null);
    m.insert("groupTypes".into(), json!(types));
    m.insert(
        "isAssignableToRole".into(),
        if g.is_assignable_to_role {
            json!(true)
        } else {
            Value::Null
        },
    );
    m.insert(
        "mail".into(),
        if mail_enabled {
            json!(format!("{nick}@example.com"))
        } else {
            Value::Null
        },
    );
    m.insert("mailEnabled".into(), json!(mail_enabled));
    m.insert("mailNickname".into(), json!(nick));
    m.insert("membershipRule".into(), json!(g.membership_rule));
    m.insert(
        "membershipRuleProcessingState".into(),
        if g.membership_rule.is_some() {
            json!("On")
        } else {
            Value::Null
        },
    );
    m.insert(
        "onPremisesSyncEnabled".into(),
        if g.on_premises_sync_enabled {
            json!(true)
        } else {
            Value::Null
        },
    );
    m.insert(
        "onPremisesSamAccountName".into(),
        if g.on_premises_sync_enabled {
            json!(nick)
        } else {
            Value::Null
        },
    );
    m.insert("proxyAddresses".into(), json!([]));
    m.insert("renewedDateTime".into(), json!(g.created));
    m.insert("resourceBehaviorOptions".into(), json!([]));
    m.insert("resourceProvisioningOptions".into(), json!([]));
    m.insert("securityEnabled".into(), json!(security));
    m.insert(
        "securityIdentifier".into(),
        json!(format!("S-1-12-1-{}", g.id.as_u128() as u32)),
    );
    m.insert("visibility".into(), json!(g.visibility));
    m
}

pub fn app_role(r: &AppRole) -> Value {
    json!({
        "allowedMemberTypes": r.allowed_member_types,
        "description": r.description,
        "displayName": r.display_name,
        "id": r.id,
        "isEnabled": r.is_enabled,
        "origin": "Application",
        "value": r.value,
    })
}

pub fn service_principal(s: &ServicePrincipal) -> Obj_ {
    let mut m = Map::with_capacity(24);
    m.insert("id".into(), json!(s.id));
    m.insert("deletedDateTime".into(), Value::Null);
    m.insert("accountEnabled".into(), json!(s.account_enabled));
    m.insert("alternativeNames".into(), json!(s.alternative_names));
    m.insert(
        "appDisplayName".into(),
        if s.kind == SpKind::ManagedIdentity {
            Value::Null
        } else {
            json!(s.display_name)
        },
    );
    m.insert("appDescription".into(), Value::Null);
    m.insert("appId".into(), json!(s.app_id));
    m.insert("appOwnerOrganizationId".into(), json!(s.owner_organization));
    m.insert(
        "appRoleAssignmentRequired".into(),
        json!(s.app_role_assignment_required),
    );
    m.insert(
        "appRoles".into(),
        Value::Array(s.app_roles.iter().map(app_role).collect()),
    );
    m.insert("description".into(), Value::Null);
    m.insert("displayName".into(), json!(s.display_name));
    m.insert("homepage".into(), json!(s.homepage));
    m.insert("notes".into(), Value::Null);
    m.insert("preferredSingleSignOnMode".into(), Value::Null);
    let mut names = vec![s.app_id.to_string()];
    if let Some(h) = &s.homepage {
        names.push(h.clone());
    }
    if s.kind == SpKind::ManagedIdentity
        && let Some(arm) = s.alternative_names.iter().find(|n| n.starts_with('/'))
    {
        names.push(format!("https://identity.azure.net/{}", arm.len()));
    }
    m.insert("servicePrincipalNames".into(), json!(names));
    m.insert(
        "servicePrincipalType".into(),
        json!(match s.kind {
            SpKind::Application => "Application",
            SpKind::ManagedIdentity => "ManagedIdentity",
            SpKind::Legacy => "Legacy",
            SpKind::SocialIdp => "SocialIdp",
        }),
    );
    m.insert(
        "signInAudience".into(),
        json!(match (s.kind, s.publisher) {
            (SpKind::ManagedIdentity, _) => Value::Null,
            (_, Publisher::Tenant) => json!("AzureADMyOrg"),
            _ => json!("AzureADMultipleOrgs"),
        }),
    );
    m.insert("tags".into(), json!(s.tags));
    m
}

pub fn application(a: &Application) -> Obj_ {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("deletedDateTime".into(), Value::Null);
    m.insert("appId".into(), json!(a.app_id));
    m.insert("createdDateTime".into(), json!(a.created));
    m.insert("displayName".into(), json!(a.display_name));
    m.insert("signInAudience".into(), json!(a.sign_in_audience));
    m.insert(
        "passwordCredentials".into(),
        Value::Array(
            a.secrets
                .iter()
                .map(|s| {
                    json!({
                        "customKeyIdentifier": null, "displayName": s.display_name, "endDateTime": s.end,
                        "hint": s.secret.chars().take(3).collect::<String>(), "keyId": s.key_id,
                        "secretText": null, "startDateTime": s.start,
                    })
                })
                .collect(),
        ),
    );
    m.insert(
        "keyCredentials".into(),
        Value::Array(
            a.certificates
                .iter()
                .map(|c| {
                    json!({
                        "customKeyIdentifier": null, "displayName": c.display_name, "endDateTime": c.end,
                        "key": null, "keyId": c.key_id, "startDateTime": c.start,
                        "type": "AsymmetricX509Cert", "usage": "Verify",
                    })
                })
                .collect(),
        ),
    );
    m.insert("appRoles".into(), json!([]));
    m.insert("requiredResourceAccess".into(), json!([]));
    m
}

pub fn app_role_assignment(st: &State, a: &AppRoleAssignment) -> Obj_ {
    let ptype = match st.principal_type(&a.principal_id) {
        Some(PrincipalType::User) => "User",
        Some(PrincipalType::Group) => "Group",
        _ => "ServicePrincipal",
    };
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("deletedDateTime".into(), Value::Null);
    m.insert("appRoleId".into(), json!(a.app_role_id));
    m.insert("createdDateTime".into(), json!(a.created));
    m.insert(
        "principalDisplayName".into(),
        json!(st.display_name(&a.principal_id)),
    );
    m.insert("principalId".into(), json!(a.principal_id));
    m.insert("principalType".into(), json!(ptype));
    m.insert(
        "resourceDisplayName".into(),
        json!(st.display_name(&a.resource_id)),
    );
    m.insert("resourceId".into(), json!(a.resource_id));
    m
}

pub fn role_definition(r: &RoleDefinition) -> Obj_ {
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    m.insert("description".into(), json!(r.description));
    m.insert("displayName".into(), json!(r.display_name));
    m.insert("isBuiltIn".into(), json!(r.is_built_in));
    m.insert("isEnabled".into(), json!(r.is_enabled));
    m.insert("resourceScopes".into(), json!(["/"]));
    m.insert("templateId".into(), json!(r.id));
    m.insert("version".into(), json!("1"));
    m.insert(
        "rolePermissions".into(),
        json!([{"allowedResourceActions": r.allowed_actions, "condition": null}]),
    );
    m.insert("inheritsPermissionsFrom".into(), json!([]));
    m
}

pub fn role_assignment(r: &RoleAssignment) -> Obj_ {
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    m.insert("principalId".into(), json!(r.principal_id));
    m.insert("roleDefinitionId".into(), json!(r.role_definition_id));
    m.insert("directoryScopeId".into(), json!(r.directory_scope_id));
    m.insert("appScopeId".into(), Value::Null);
    m.insert("condition".into(), Value::Null);
    m
}

fn expiration(end: &Option<String>) -> Value {
    match end {
        Some(e) => json!({"type": "afterDateTime", "endDateTime": e, "duration": null}),
        None => json!({"type": "noExpiration", "endDateTime": null, "duration": null}),
    }
}

pub fn role_eligibility_schedule(e: &RoleEligibility) -> Obj_ {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("principalId".into(), json!(e.principal_id));
    m.insert("roleDefinitionId".into(), json!(e.role_definition_id));
    m.insert("directoryScopeId".into(), json!(e.directory_scope_id));
    m.insert("appScopeId".into(), Value::Null);
    m.insert("createdDateTime".into(), json!(e.start));
    m.insert("createdUsing".into(), json!(e.id));
    m.insert("modifiedDateTime".into(), Value::Null);
    m.insert("status".into(), json!("Provisioned"));
    m.insert("memberType".into(), json!("Direct"));
    m.insert(
        "scheduleInfo".into(),
        json!({"startDateTime": e.start, "recurrence": null, "expiration": expiration(&e.end)}),
    );
    m
}

pub fn role_eligibility_instance(e: &RoleEligibility) -> Obj_ {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("principalId".into(), json!(e.principal_id));
    m.insert("roleDefinitionId".into(), json!(e.role_definition_id));
    m.insert("directoryScopeId".into(), json!(e.directory_scope_id));
    m.insert("appScopeId".into(), Value::Null);
    m.insert("startDateTime".into(), json!(e.start));
    m.insert("endDateTime".into(), json!(e.end));
    m.insert("memberType".into(), json!("Direct"));
    m.insert("roleEligibilityScheduleId".into(), json!(e.id));
    m
}

pub fn subscribed_sku(t: &Tenant, s: &Sku) -> Obj_ {
    let consumed = t.users.iter().filter(|u| u.licenses.contains(&s.sku_id)).count();
    let mut m = Map::new();
    m.insert("accountId".into(), json!(t.tenant_id));
    m.insert("accountName".into(), json!(t.display_name));
    m.insert("appliesTo".into(), json!("User"));
    m.insert("capabilityStatus".into(), json!("Enabled"));
    m.insert("consumedUnits".into(), json!(consumed));
    m.insert("id".into(), json!(format!("{}_{}", t.tenant_id, s.sku_id)));
    m.insert(
        "prepaidUnits".into(),
        json!({"enabled": s.enabled_units, "lockedOut": 0, "suspended": 0, "warning": 0}),
    );
    m.insert(
        "servicePlans".into(),
        Value::Array(
            s.service_plans
                .iter()
                .map(|p| json!({"servicePlanId": p.service_plan_id, "servicePlanName": p.service_plan_name, "provisioningStatus": "Success", "appliesTo": "User"}))
                .collect(),
        ),
    );
    m.insert("skuId".into(), json!(s.sku_id));
    m.insert("skuPartNumber".into(), json!(s.sku_part_number));
    m.insert("subscriptionIds".into(), json!([]));
    m
}

pub fn license_detail(s: &Sku, user: &Uuid) -> Obj_ {
    use base64::Engine;
    let mut raw = Vec::with_capacity(32);
    raw.extend_from_slice(s.sku_id.as_bytes());
    raw.extend_from_slice(user.as_bytes());
    let mut m = Map::new();
    m.insert(
        "id".into(),
        json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)),
    );
    m.insert("skuId".into(), json!(s.sku_id));
    m.insert("skuPartNumber".into(), json!(s.sku_part_number));
    m.insert(
        "servicePlans".into(),
        Value::Array(
            s.service_plans
                .iter()
                .map(|p| json!({"servicePlanId": p.service_plan_id, "servicePlanName": p.service_plan_name, "provisioningStatus": "Success", "appliesTo": "User"}))
                .collect(),
        ),
    );
    m
}

pub fn organization(t: &Tenant) -> Obj_ {
    let mut m = Map::new();
    m.insert("id".into(), json!(t.tenant_id));
    m.insert("deletedDateTime".into(), Value::Null);
    m.insert("businessPhones".into(), json!([]));
    m.insert("city".into(), Value::Null);
    m.insert("country".into(), Value::Null);
    m.insert("countryLetterCode".into(), json!("NL"));
    m.insert("createdDateTime".into(), json!("2020-01-01T00:00:00Z"));
    m.insert("displayName".into(), json!(t.display_name));
    m.insert(
        "onPremisesSyncEnabled".into(),
        json!(t.users.iter().any(|u| u.on_premises_sync_enabled)),
    );
    m.insert("preferredLanguage".into(), json!("en"));
    m.insert("tenantType".into(), json!("AAD"));
    m.insert(
        "verifiedDomains".into(),
        Value::Array(
            t.domains
                .iter()
                .map(|d| json!({"capabilities": "Email, OfficeCommunicationsOnline", "isDefault": d.is_default, "isInitial": d.is_initial, "name": d.name, "type": "Managed"}))
                .collect(),
        ),
    );
    m
}

pub fn mailbox_settings(p: MailboxPurpose) -> Obj_ {
    let purpose = match p {
        MailboxPurpose::User => "user",
        MailboxPurpose::Linked => "linked",
        MailboxPurpose::Shared => "shared",
        MailboxPurpose::Room => "room",
        MailboxPurpose::Equipment => "equipment",
        MailboxPurpose::Others => "others",
    };
    let mut m = Map::new();
    m.insert("archiveFolder".into(), json!("AAMkAGI2"));
    m.insert("timeZone".into(), json!("W. Europe Standard Time"));
    m.insert("dateFormat".into(), json!("dd/MM/yyyy"));
    m.insert("timeFormat".into(), json!("HH:mm"));
    m.insert(
        "delegateMeetingMessageDeliveryOptions".into(),
        json!("sendToDelegateOnly"),
    );
    m.insert(
        "language".into(),
        json!({"locale": "en-US", "displayName": "English (United States)"}),
    );
    m.insert(
        "automaticRepliesSetting".into(),
        json!({"status": "disabled", "externalAudience": "all", "internalReplyMessage": "", "externalReplyMessage": ""}),
    );
    m.insert("userPurpose".into(), json!(purpose));
    m
}

/// Any directory object, with its `@odata.type`, as in member/owner lists and `directoryObjects`.
pub fn directory_object(st: &State, id: &Uuid, with_sign_in: bool) -> Option<(Obj_, &'static str)> {
    let (mut m, t) = match st.objects.get(id)? {
        Obj::User(i) => (user(&st.tenant.users[*i], with_sign_in), "#microsoft.graph.user"),
        Obj::Group(i) => (group(&st.tenant.groups[*i]), "#microsoft.graph.group"),
        Obj::Sp(i) => (
            service_principal(&st.tenant.service_principals[*i]),
            "#microsoft.graph.servicePrincipal",
        ),
        Obj::App(i) => (
            application(&st.tenant.applications[*i]),
            "#microsoft.graph.application",
        ),
    };
    m.insert("@odata.type".into(), json!(t));
    Some((m, t))
}
