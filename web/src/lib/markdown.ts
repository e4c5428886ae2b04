// Model output as markdown: parsed by marked, then sanitised by DOMPurify, so whatever HTML a
// model writes is shown as text or stripped, never run.
import DOMPurify from "dompurify";
import { marked } from "marked";

export function renderMarkdown(text: string): string {
  const html = marked.parse(text, { async: false, gfm: true, breaks: true });
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true } });
}
