// Building the page from data. Text goes in as text (textContent), never as markup, so a
// path like /<img src=x onerror=alert(1)> shows as those characters and runs nothing.

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

export function message(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}
