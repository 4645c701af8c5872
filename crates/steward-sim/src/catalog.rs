//! Things that are the same in every Microsoft tenant: Microsoft's first-party apps, Graph's application
//! permissions, built-in directory roles, common license SKUs and built-in Azure roles.
//!
//! Identifiers are Microsoft's published ones where they are well known; anything else gets a stable id
//! derived from its name (`stable_uuid`), so two emulators agree without a list of every GUID Microsoft has.

use uuid::Uuid;

/// Microsoft's own tenant: appOwnerOrganizationId of first-party apps.
pub const MICROSOFT_TENANT: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
/// Microsoft Graph's appId; also an accepted audience of Graph tokens.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
/// Azure Resource Manager ("Windows Azure Service Management API").
pub const ARM_APP_ID: &str = "797f4846-ba00-4fd7-ba43-dac1f8f63013";
/// The default-access app role id.
pub const DEFAULT_ACCESS: Uuid = Uuid::nil();

/// A deterministic UUID from a name (FNV-1a over two seeds, version 4 bits set), for catalog entries whose
/// real GUID we do not carry.
pub fn stable_uuid(name: &str) -> Uuid {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in name.bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(7);
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap_or_else(|_| stable_uuid(s))
}

/// First-party apps that every tenant has service principals for: (appId, displayName).
pub const FIRST_PARTY_APPS: &[(&str, &str)] = &[
    (GRAPH_APP_ID, "Microsoft Graph"),
    (ARM_APP_ID, "Windows Azure Service Management API"),
    (
        "00000002-0000-0ff1-ce00-000000000000",
        "Office 365 Exchange Online",
    ),
    (
        "00000003-0000-0ff1-ce00-000000000000",
        "Office 365 SharePoint Online",
    ),
    (
        "00000002-0000-0000-c000-000000000000",
        "Windows Azure Active Directory",
    ),
    ("cc15fd57-2c6c-4117-a88c-83b1d56b4bbe", "Microsoft Teams Services"),
    ("00000007-0000-0000-c000-000000000000", "Dataverse"),
    ("00000009-0000-0000-c000-000000000000", "Power BI Service"),
    ("0000000a-0000-0000-c000-000000000000", "Microsoft Intune"),
    (
        "c5393580-f805-4401-95e8-94b7a6ef2fc2",
        "Office 365 Management APIs",
    ),
    ("cfa8b339-82a2-471a-a3c9-0fc0be7a4093", "Azure Key Vault"),
    ("e406a681-f3d4-42a8-90b6-c2b029497af1", "Azure Storage"),
];

/// Graph application permissions, exposed as app roles of the Microsoft Graph service principal:
/// (appRole id, value). The token's `roles` claim lists the values granted to the calling app.
pub fn graph_permissions() -> Vec<(Uuid, &'static str)> {
    [
        ("df021288-bdef-4463-88db-98f22de89214", "User.Read.All"),
        ("741f803b-c850-494e-b5df-cde7c675a1ca", "User.ReadWrite.All"),
        ("5b567255-7703-4780-807c-7be8301ae99b", "Group.Read.All"),
        ("62a82d76-70ea-41e2-9197-370581804d09", "Group.ReadWrite.All"),
        ("98830695-27a2-44f7-8c18-0c3ebc9698f6", "GroupMember.Read.All"),
        (
            "dbaae8cf-10b5-4b86-a4a1-f871c94c6695",
            "GroupMember.ReadWrite.All",
        ),
        ("7ab1d382-f21e-4acd-a863-ba3e13f7da61", "Directory.Read.All"),
        ("19dbc75e-c2e2-444c-a770-ec69d8559fc7", "Directory.ReadWrite.All"),
        ("9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30", "Application.Read.All"),
        (
            "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9",
            "Application.ReadWrite.All",
        ),
        (
            "06b708a9-e830-4db3-a914-8e69da51d44f",
            "AppRoleAssignment.ReadWrite.All",
        ),
        (
            "483bed4a-2ad3-4361-a73b-c83ccdbdc53c",
            "RoleManagement.Read.Directory",
        ),
        (
            "9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8",
            "RoleManagement.ReadWrite.Directory",
        ),
        (
            "RoleEligibilitySchedule.Read.Directory",
            "RoleEligibilitySchedule.Read.Directory",
        ),
        (
            "RoleEligibilitySchedule.ReadWrite.Directory",
            "RoleEligibilitySchedule.ReadWrite.Directory",
        ),
        (
            "RoleAssignmentSchedule.ReadWrite.Directory",
            "RoleAssignmentSchedule.ReadWrite.Directory",
        ),
        ("40f97065-3a51-4e0e-b3c7-e3c0c1f7e2b6", "MailboxSettings.Read"),
        ("498476ce-e0fe-48b0-b801-37ba7e2685c6", "Organization.Read.All"),
        ("AuditLog.Read.All", "AuditLog.Read.All"),
        ("LicenseAssignment.Read.All", "LicenseAssignment.Read.All"),
    ]
    .iter()
    .map(|(i, v)| (id(i), *v))
    .collect()
}

/// Built-in directory roles: (templateId = role definition id, displayName, description).
pub const DIRECTORY_ROLES: &[(&str, &str, &str)] = &[
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
        "Can manage all aspects of Microsoft Entra ID and Microsoft services that use Microsoft Entra identities.",
    ),
    (
        "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
        "Global Reader",
        "Can read everything that a Global Administrator can, but not update anything.",
    ),
    (
        "fe930be7-5e62-47db-91af-98c3a49a38b1",
        "User Administrator",
        "Can manage all aspects of users and groups, including resetting passwords for limited admins.",
    ),
    (
        "fdd7a751-b60b-444a-984c-02652fe8fa1c",
        "Groups Administrator",
        "Members of this role can create/manage groups, create/manage groups settings like naming and expiration policies, and view groups activity and audit reports.",
    ),
    (
        "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3",
        "Application Administrator",
        "Can create and manage all aspects of app registrations and enterprise apps.",
    ),
    (
        "158c047a-c907-4556-b7ef-446551a6b5f7",
        "Cloud Application Administrator",
        "Can create and manage all aspects of app registrations and enterprise apps except App Proxy.",
    ),
    (
        "194ae4cb-b126-40b2-bd5b-6091b380977d",
        "Security Administrator",
        "Can read security information and reports, and manage configuration in Microsoft Entra ID and Office 365.",
    ),
    (
        "5d6b6bb7-de71-4623-b4af-96380a352509",
        "Security Reader",
        "Can read security information and reports in Microsoft Entra ID and Office 365.",
    ),
    (
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        "Helpdesk Administrator",
        "Can reset passwords for non-administrators and Helpdesk Administrators.",
    ),
    (
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
        "Privileged Role Administrator",
        "Can manage role assignments in Microsoft Entra ID, and all aspects of Privileged Identity Management.",
    ),
    (
        "7be44c8a-adaf-4e2a-84d6-ab2649e08a13",
        "Privileged Authentication Administrator",
        "Can access to view, set and reset authentication method information for any user (admin or non-admin).",
    ),
    (
        "c4e39bd9-1100-46d3-8c65-fb160da0071f",
        "Authentication Administrator",
        "Can access to view, set and reset authentication method information for any non-admin user.",
    ),
    (
        "29232cdf-9323-42fd-ade2-1d097af3e4de",
        "Exchange Administrator",
        "Can manage all aspects of the Exchange product.",
    ),
    (
        "f28a1f50-f6e7-4571-818b-6a12f2af6b6c",
        "SharePoint Administrator",
        "Can manage all aspects of the SharePoint service.",
    ),
    (
        "69091246-20e8-4a56-aa4d-066075b2a7a8",
        "Teams Administrator",
        "Can manage the Microsoft Teams service.",
    ),
    (
        "b0f54661-2d74-4c50-afa3-1ec803f12efe",
        "Billing Administrator",
        "Can perform common billing related tasks like updating payment information.",
    ),
    (
        "4d6ac14f-3453-41d0-bef9-a3e0c569773a",
        "License Administrator",
        "Can manage product licenses on users and groups.",
    ),
    (
        "3a2c62db-5318-420d-8d74-23affee5d9d5",
        "Intune Administrator",
        "Can manage all aspects of the Intune product.",
    ),
    (
        "b1be1c3e-b65d-4f19-8427-f6fa0d97feb9",
        "Conditional Access Administrator",
        "Can manage Conditional Access capabilities.",
    ),
    (
        "17315797-102d-40b4-93e0-432062caca18",
        "Compliance Administrator",
        "Can read and manage compliance configuration and reports in Microsoft Entra ID and Microsoft 365.",
    ),
    (
        "88d8e3e3-8f55-4a1e-953a-9b9898b8876b",
        "Directory Readers",
        "Can read basic directory information. Commonly used to grant directory read access to applications and guests.",
    ),
    (
        "4a5d8f65-41da-4de4-8968-e035b65339cf",
        "Reports Reader",
        "Can read sign-in and audit reports.",
    ),
];

/// License SKUs: (skuId, skuPartNumber, service plan names).
pub const SKUS: &[(&str, &str, &[&str])] = &[
    (
        "6fd2c87f-b296-42f0-b197-1e91e994b900",
        "ENTERPRISEPACK",
        &[
            "EXCHANGE_S_ENTERPRISE",
            "SHAREPOINTENTERPRISE",
            "TEAMS1",
            "OFFICESUBSCRIPTION",
        ],
    ),
    (
        "06ebc4ee-1bb5-47dd-8120-11324bc54e06",
        "SPE_E5",
        &[
            "EXCHANGE_S_ENTERPRISE",
            "AAD_PREMIUM",
            "AAD_PREMIUM_P2",
            "TEAMS1",
            "INTUNE_A",
        ],
    ),
    (
        "84a661c4-e949-4bd2-a560-ed7766fcaf2b",
        "AAD_PREMIUM_P2",
        &["AAD_PREMIUM", "AAD_PREMIUM_P2", "MFA_PREMIUM"],
    ),
    (
        "efccb6f7-5641-4e0e-bd10-b4976e1bf68e",
        "EMS",
        &["AAD_PREMIUM", "INTUNE_A", "RMS_S_PREMIUM"],
    ),
    (
        "f8a1db68-be16-40ed-86d5-cb42ce701560",
        "POWER_BI_PRO",
        &["BI_AZURE_P2"],
    ),
    (
        "c5928f49-12ba-48f7-ada3-0d743a3601d5",
        "VISIOCLIENT",
        &["VISIO_CLIENT_SUBSCRIPTION"],
    ),
    (
        "09015f9f-377f-4538-bbb5-f75ceb09358a",
        "PROJECTPREMIUM",
        &["PROJECT_CLIENT_SUBSCRIPTION"],
    ),
];

pub fn sku_service_plan_id(plan: &str) -> Uuid {
    stable_uuid(&format!("serviceplan:{plan}"))
}

/// Well-known built-in Azure roles: (name GUID, roleName, actions, dataActions).
pub const AZURE_BUILTIN_ROLES: &[(&str, &str, &[&str], &[&str])] = &[
    ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner", &["*"], &[]),
    ("b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor", &["*"], &[]),
    ("acdd72a7-3385-48ef-bd42-f606fba81ae7", "Reader", &["*/read"], &[]),
    (
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
        "User Access Administrator",
        &["*/read", "Microsoft.Authorization/*"],
        &[],
    ),
    (
        "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
        "Role Based Access Control Administrator",
        &[
            "Microsoft.Authorization/roleAssignments/write",
            "Microsoft.Authorization/roleAssignments/delete",
        ],
        &[],
    ),
    (
        "17d1049b-9a84-46fb-8f53-869881c3d3ab",
        "Storage Account Contributor",
        &["Microsoft.Storage/storageAccounts/*"],
        &[],
    ),
    (
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
        "Storage Blob Data Reader",
        &["Microsoft.Storage/storageAccounts/blobServices/containers/read"],
        &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"],
    ),
    (
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "Storage Blob Data Contributor",
        &["Microsoft.Storage/storageAccounts/blobServices/containers/*"],
        &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"],
    ),
    (
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "Storage Blob Data Owner",
        &["Microsoft.Storage/storageAccounts/blobServices/containers/*"],
        &["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"],
    ),
    (
        "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
        "Virtual Machine Contributor",
        &["Microsoft.Compute/virtualMachines/*"],
        &[],
    ),
    (
        "4d97b98b-1d4f-4787-a291-c67834d212e7",
        "Network Contributor",
        &["Microsoft.Network/*"],
        &[],
    ),
    (
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        "Key Vault Administrator",
        &["Microsoft.KeyVault/*"],
        &["Microsoft.KeyVault/vaults/*"],
    ),
    (
        "43d0d8ad-25c7-4714-9337-8ba259a9fe05",
        "Monitoring Reader",
        &["*/read"],
        &[],
    ),
    (
        "f1a07417-d97a-45cb-824c-7a7467783830",
        "Managed Identity Operator",
        &[
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
        ],
        &[],
    ),
];

/// Services used to fill the built-in role list up to Azure's real size (~500 roles).
pub const AZURE_SERVICES: &[&str] = &[
    "App Service",
    "Automation",
    "Backup",
    "Batch",
    "Billing",
    "Blueprint",
    "CDN",
    "Cognitive Services",
    "Container Registry",
    "Cosmos DB",
    "Data Factory",
    "Data Lake",
    "Databricks",
    "DevTest Labs",
    "DNS Zone",
    "Event Grid",
    "Event Hubs",
    "Front Door",
    "HDInsight",
    "IoT Hub",
    "Kubernetes Service",
    "Lab Services",
    "Log Analytics",
    "Logic App",
    "Machine Learning",
    "Maps",
    "Media Services",
    "Monitoring",
    "Policy",
    "Purview",
    "Redis Cache",
    "Search Service",
    "Security",
    "Service Bus",
    "SignalR",
    "Site Recovery",
    "SQL Server",
    "SQL Database",
    "Stream Analytics",
    "Synapse",
    "Traffic Manager",
    "Web Plan",
    "Workbook",
    "Attestation",
    "Chaos Studio",
    "Communication Services",
    "Container Apps",
    "Grafana",
    "Load Test",
    "Managed HSM",
    "Spring Apps",
    "Static Web Apps",
    "Virtual Desktop",
    "Video Indexer",
    "App Configuration",
    "API Management",
    "Application Insights",
    "Arc",
    "Automanage",
    "Azure Stack",
    "Blockchain",
    "Bot Service",
    "Classic Compute",
    "Classic Network",
    "Classic Storage",
    "Cost Management",
    "Data Box",
    "Defender",
    "Digital Twins",
    "Disk",
    "Elastic SAN",
    "Fabric",
    "Health Bot",
    "Hybrid Compute",
    "Lighthouse",
    "Migrate",
    "Notification Hubs",
    "Object Anchors",
    "OpenAI",
    "Private DNS",
    "Quantum",
    "Relay",
    "Remote Rendering",
    "Scheduler",
    "Schema Registry",
    "Sentinel",
    "Service Fabric",
    "Spatial Anchors",
    "Template Spec",
    "Time Series Insights",
    "Update Manager",
    "VM Image Builder",
    "Web PubSub",
    "Workload Monitor",
    "Zone Redundant Storage",
    "Dev Box",
    "Deployment Environments",
    "Backup Vault",
    "Monitor Metrics",
    "Managed Grafana",
    "Resource Mover",
    "Network Watcher",
    "Firewall",
    "Bastion",
    "Application Gateway",
    "Load Balancer",
    "Virtual Network",
    "Public IP",
    "Private Link",
    "ExpressRoute",
    "VPN Gateway",
    "Key Vault Secrets",
    "Key Vault Certificates",
    "Key Vault Crypto",
    "Queue Data",
    "Table Data",
    "File Data SMB Share",
    "Storage File Data",
    "Avere",
    "Confidential Ledger",
    "Energy Data",
    "Graph Services",
];

pub const AZURE_ROLE_SUFFIXES: &[&str] = &["Reader", "Contributor", "Operator", "Administrator"];

pub const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Amara", "Anil", "Aroha", "Beatriz", "Bjorn", "Carmen", "Chen", "Chloe", "Dalia",
    "Daniel", "Dmitri", "Elena", "Emeka", "Farah", "Felix", "Fatima", "Giulia", "Grace", "Hana", "Hugo",
    "Ines", "Ivan", "Jamal", "Jia", "Jonas", "Kaito", "Kavya", "Lars", "Leila", "Lucia", "Malik", "Maria",
    "Mateo", "Mei", "Nadia", "Niamh", "Noah", "Olga", "Omar", "Priya", "Quentin", "Rafael", "Rania", "Ravi",
    "Sakura", "Samir", "Sofia", "Tariq", "Thandi", "Tomas", "Uma", "Viktor", "Wei", "Yara", "Yusuf",
    "Zanele", "Zoe", "Kwame",
];

pub const LAST_NAMES: &[&str] = &[
    "Abara",
    "Andersen",
    "Bauer",
    "Bianchi",
    "Chen",
    "Costa",
    "Dubois",
    "Eriksson",
    "Fernandez",
    "Fischer",
    "Garcia",
    "Gupta",
    "Haddad",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Kim",
    "Kowalski",
    "Kumar",
    "Larsen",
    "Lopez",
    "Martin",
    "Mensah",
    "Moreau",
    "Mueller",
    "Nakamura",
    "Nguyen",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Petrov",
    "Quinn",
    "Rossi",
    "Sato",
    "Schmidt",
    "Silva",
    "Singh",
    "Suzuki",
    "Tanaka",
    "Torres",
    "Ueda",
    "Varga",
    "Wagner",
    "Wang",
    "Weber",
    "Xu",
    "Yamamoto",
    "Zhang",
    "Zulu",
];

pub const DEPARTMENTS: &[&str] = &[
    "Engineering",
    "Sales",
    "Marketing",
    "Finance",
    "Human Resources",
    "Legal",
    "Operations",
    "Support",
    "Product",
    "Security",
    "Research",
    "Facilities",
];

pub const JOB_TITLES: &[&str] = &[
    "Engineer",
    "Senior Engineer",
    "Manager",
    "Director",
    "Analyst",
    "Specialist",
    "Coordinator",
    "Consultant",
    "Architect",
    "Administrator",
    "Associate",
    "Lead",
];

pub const SAAS_APPS: &[&str] = &[
    "Salesforce",
    "Workday",
    "ServiceNow",
    "Slack",
    "Zoom",
    "GitHub Enterprise",
    "Atlassian Cloud",
    "Box",
    "Dropbox Business",
    "DocuSign",
    "Adobe Creative Cloud",
    "Tableau",
    "Snowflake",
    "Okta Workflows",
    "AWS IAM Identity Center",
    "Google Cloud",
    "Datadog",
    "PagerDuty",
    "Zendesk",
    "HubSpot",
    "Miro",
    "Figma",
    "Asana",
    "Monday.com",
    "Notion",
    "Coupa",
    "Concur",
    "SAP SuccessFactors",
    "Greenhouse",
    "Lucidchart",
];

pub const LOCATIONS: &[&str] = &[
    "westeurope",
    "northeurope",
    "eastus",
    "eastus2",
    "westus2",
    "uksouth",
    "swedencentral",
];

pub const RG_PURPOSES: &[&str] = &[
    "network",
    "shared",
    "data",
    "app",
    "monitoring",
    "security",
    "identity",
    "backup",
    "web",
    "analytics",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_uuid_is_stable_and_distinct() {
        assert_eq!(stable_uuid("a"), stable_uuid("a"));
        assert_ne!(stable_uuid("a"), stable_uuid("b"));
        assert_eq!(stable_uuid("x").get_version_num(), 4);
    }

    #[test]
    fn catalog_ids_are_unique() {
        let perms = graph_permissions();
        let mut ids: Vec<_> = perms.iter().map(|p| p.0).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), perms.len());
        let mut roles: Vec<_> = DIRECTORY_ROLES.iter().map(|r| r.0).collect();
        roles.sort();
        roles.dedup();
        assert_eq!(roles.len(), DIRECTORY_ROLES.len());
    }
}
