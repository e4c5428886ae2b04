"""The official `openai` Node SDK from npm (installed by scripts/openai_node.sh) streams a chat
through the edge: the echo model's answer, one final chunk with the finish reason, and usage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support import API_KEY, ServiceProcess

SCRIPT = Path(__file__).parents[2] / "scripts" / "openai_node.sh"
CHAT = """
const { OpenAI } = require("openai");
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY });
(async () => {
  const stream = await client.chat.completions.create({
    model: "echo",
    messages: [{ role: "user", content: "Hello from Node" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  console.log(JSON.stringify(chunks));
})().catch((error) => { console.error(error); process.exit(1); });
"""


def test_node_sdk_streams_a_chat(edge: ServiceProcess) -> None:
    folder = subprocess.run(
        [str(SCRIPT)], check=True, capture_output=True, text=True, timeout=600
    ).stdout.strip()
    env = {
        **os.environ,
        "NODE_PATH": str(Path(folder) / "node_modules"),
        "BASE_URL": f"http://{edge.address}/v1",
        "API_KEY": API_KEY,
    }
    ran = subprocess.run(
        ["node", "-e", CHAT], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    chunks = json.loads(ran.stdout)
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == "Hello from Node"
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert chunks[-1]["usage"]["completion_tokens"] == len("Hello from Node")
