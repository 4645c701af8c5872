"""Microsoft's own client libraries against the emulator, unchanged, through its HTTPS proxy.

Run by scripts/test: starts `steward sim serve --proxy`, points HTTPS_PROXY and SSL_CERT_FILE at it, and
uses msal, azure-identity and msgraph-sdk exactly as against Microsoft (no endpoint overrides), plus ARM
through the same proxy. Prints 'sdks: N passed, M failed' and exits non-zero on any failure.
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile

STEWARD = sys.argv[1]
state = tempfile.mkdtemp(prefix="steward-sdk-")
proc = subprocess.Popen(
    [STEWARD, "sim", "serve", "--tenant", "small", "--seed", "7", "--proxy", "127.0.0.1:0", "--state-dir", state],
    stdout=subprocess.PIPE,
    text=True,
)
ready = json.loads(proc.stdout.readline())
os.environ["HTTPS_PROXY"] = "http://" + ready["proxy"]
os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = ready["ca_file"]
os.environ.pop("NO_PROXY", None)
os.environ.pop("no_proxy", None)

import msal  # noqa: E402
import requests  # noqa: E402
from azure.identity import ClientSecretCredential  # noqa: E402
from azure.identity.aio import ClientSecretCredential as AsyncCredential  # noqa: E402
from msgraph import GraphServiceClient  # noqa: E402

passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


tid, cid, secret = ready["tenant_id"], ready["client_id"], ready["client_secret"]
try:
    app = msal.ConfidentialClientApplication(
        cid, client_credential=secret, authority=f"https://login.microsoftonline.com/{tid}", instance_discovery=False
    )
    tok = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    check("msal client credentials", "access_token" in tok, tok)
    bad = msal.ConfidentialClientApplication(
        cid, client_credential="wrong", authority=f"https://login.microsoftonline.com/{tid}", instance_discovery=False
    ).acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    check("msal sees AADSTS7000215", 7000215 in bad.get("error_codes", []), bad)

    cred = ClientSecretCredential(tid, cid, secret, disable_instance_discovery=True)
    arm = cred.get_token("https://management.azure.com/.default").token
    subs = requests.get(
        "https://management.azure.com/subscriptions?api-version=2022-12-01",
        headers={"Authorization": f"Bearer {arm}"},
        timeout=30,
    ).json()
    check("azure-identity token works on ARM", len(subs.get("value", [])) == 2, subs)

    async def graph():
        client = GraphServiceClient(
            AsyncCredential(tid, cid, secret, disable_instance_discovery=True),
            scopes=["https://graph.microsoft.com/.default"],
        )
        users = await client.users.get()
        total = len(users.value)
        link = users.odata_next_link
        while link:
            page = await client.users.with_url(link).get()
            total += len(page.value)
            link = page.odata_next_link
        groups = await client.groups.get()
        return total, len(groups.value)

    users, groups = asyncio.run(graph())
    check("msgraph-sdk pages all users", users == 200, users)
    check("msgraph-sdk lists groups", groups == 40, groups)
finally:
    proc.terminate()
    proc.wait()

print(f"sdks: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
