// Building the page from data. Text goes in as text (textContent), never as markup, so a
// path like /<img src=x onerror=alert(1)> shows as those characters and runs nothing.

import { language, onLanguageChange } from "./i18n.js";

export function el(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

export function byId(id) {
  return document.getElementById(id);
}

export function show(node, visible) {
  node.hidden = !visible;
}

// Messages given as a function, by the node they are shown in: made again in the other
// language when it is switched.
const translated = new Map();
onLanguageChange(() => {
  for (const [node, make] of translated) shown(node, make());
});

// `content`: a text, or a list of texts and elements (an API message marked lang="en"), or
// a function that makes one in the page's language (then made again when it is switched).
export function message(node, content) {
  if (typeof content === "function") translated.set(node, content);
  else translated.delete(node);
  shown(node, typeof content === "function" ? content() : content);
}

// Marked with the language it is written in: should a text not be made again on a switch
// (an API's), the page's language is another, and a screen reader must not read this one
// with that voice.
function shown(node, content) {
  node.replaceChildren(...(Array.isArray(content) ? content : [content || ""]));
  node.hidden = !node.textContent;
  if (node.textContent) node.lang = language();
}

// Marks `input` as wrong, or right again, for screen readers, which then read the text of
// `error` with it.
export function markInvalid(input, error, invalid) {
  const others = (input.getAttribute("aria-describedby") || "").split(" ").filter((id) => id && id !== error.id);
  const ids = invalid ? [error.id, ...others] : others;
  if (ids.length) input.setAttribute("aria-describedby", ids.join(" "));
  else input.removeAttribute("aria-describedby");
  if (invalid) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

// Runs `work` with `button` disabled. A disabled button loses the focus to <body>, where a
// keyboard user would have to start again from the top of the page: the button gets it back
// once it is enabled, unless the person has moved it elsewhere meanwhile.
export async function whileBusy(button, work) {
  const hadFocus = document.activeElement === button;
  button.disabled = true;
  try {
    return await work();
  } finally {
    button.disabled = false;
    if (hadFocus && focusLost()) button.focus();
  }
}

export function focusLost() {
  return !document.activeElement || document.activeElement === document.body;
}
