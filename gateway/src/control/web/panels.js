// The page's forms beside the chat list and the chat, for app.js: the user's profile
// (display name, about line, avatar: a picture uploaded first, then named by its hash),
// a new group (a name and members by user id), the open group's members (admins add and
// remove them, anyone leaves), and the full-size view of a picture.

import { isGroup } from "./groups.js";
import { USER_ID } from "./client.js";

const $ = (id) => document.getElementById(id);

let app = null; // {client(), openChat(key), closeChat()}
let avatarChoice; // undefined: keep the avatar; null: remove it; a hash: the new one
let panelGroup = null; // the group whose members the panel shows

/** Shows `url` (a picture's blob: URL) at full size over the page, until clicked. */
export function openViewer(url, alt = "") {
  $("viewer-img").src = url;
  $("viewer-img").alt = alt;
  $("viewer").hidden = false;
}

function closeViewer() {
  $("viewer").hidden = true;
  $("viewer-img").removeAttribute("src");
}

export function closePanels() {
  $("profile-form").hidden = true;
  $("group-form").hidden = true;
  $("group-panel").hidden = true;
  closeViewer();
}

// --- The profile ----------------------------------------------------------------------

function openProfileForm() {
  const client = app.client();
  const profile = client.profiles.get(client.user) ?? {};
  $("profile-name").value = profile.display_name ?? "";
  $("profile-about").value = profile.about ?? "";
  $("profile-error").textContent = "";
  avatarChoice = undefined;
  $("profile-form").hidden = false;
  renderProfileForm();
  $("profile-name").focus();
}

/** The avatar the form shows: the one chosen, else the stored one. */
export function renderProfileForm() {
  const client = app?.client();
  if (!client || $("profile-form").hidden) return;
  const preview = $("profile-avatar-preview");
  const hash = avatarChoice === undefined ? client.profiles.avatar(client.user) : avatarChoice;
  const url = hash ? client.media.url(hash) : null;
  preview.replaceChildren();
  if (url) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "";
    preview.append(img);
  } else {
    preview.textContent = [...client.nameOf(client.user)][0]?.toUpperCase() ?? "?";
  }
  $("profile-avatar-remove").hidden = !hash;
}

async function pickAvatar(file) {
  const client = app.client();
  if (!file.type.startsWith("image/")) {
    $("profile-error").textContent = "An avatar is a picture.";
    return;
  }
  $("profile-save").disabled = true;
  $("profile-error").textContent = "Uploading the picture…";
  try {
    const { hash } = await client.media.upload(file);
    avatarChoice = hash;
    $("profile-error").textContent = "";
  } catch (error) {
    $("profile-error").textContent = `The picture was not taken: ${error.message}`;
  }
  $("profile-save").disabled = false;
  renderProfileForm();
}

async function saveProfile() {
  const client = app.client();
  const fields = { display_name: $("profile-name").value.trim(), about: $("profile-about").value.trim() };
  if (avatarChoice !== undefined) fields.avatar = avatarChoice;
  $("profile-save").disabled = true;
  try {
    await client.profiles.update(client.user, fields);
    $("profile-form").hidden = true;
  } catch (error) {
    $("profile-error").textContent = `Not saved: ${error.message}`;
  }
  $("profile-save").disabled = false;
}

// --- Groups ---------------------------------------------------------------------------

async function createGroup() {
  const client = app.client();
  const name = $("group-name").value.trim();
  const members = $("group-members").value.split(/[\s,]+/).filter((u) => u !== "");
  const bad = members.find((u) => !USER_ID.test(u));
  if (name === "") return;
  if (bad !== undefined) {
    $("group-error").textContent = `"${bad}" is not a user id.`;
    return;
  }
  $("group-create").disabled = true;
  try {
    const id = await client.groups.create(name, members);
    $("group-form").hidden = true;
    $("group-name").value = "";
    $("group-members").value = "";
    app.openChat(id);
  } catch (error) {
    $("group-error").textContent = `Not created: ${error.message}`;
  }
  $("group-create").disabled = false;
}

/** The members of the open group, if the panel is open: names, admins marked, a remove
 * button for an admin, the add form for an admin. */
export function renderGroupPanel(key) {
  const client = app?.client();
  if (!client) return;
  if (!isGroup(key) || key !== panelGroup) $("group-panel").hidden = true;
  if ($("group-panel").hidden) return;
  const group = client.groups.get(key);
  if (!group) return;
  const admin = client.groups.isAdmin(key, client.user);
  const items = group.members.map((user) => {
    const item = document.createElement("li");
    item.dataset.user = user;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = user === client.user ? "You" : client.nameOf(user);
    name.title = user;
    item.append(name);
    if (group.admins.includes(user)) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "admin";
      item.append(tag);
    }
    if (admin && user !== client.user) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link remove";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => changeMembers(() => client.groups.removeMember(key, user)));
      item.append(remove);
    }
    return item;
  });
  $("group-member-list").replaceChildren(...items);
  $("add-member-form").hidden = !admin;
}

async function changeMembers(change) {
  $("group-panel-error").textContent = "";
  try {
    await change();
  } catch (error) {
    $("group-panel-error").textContent = error.message;
  }
}

function toggleGroupPanel() {
  const panel = $("group-panel");
  panel.hidden = !panel.hidden;
  panelGroup = $("chat-title").dataset.chat ?? null;
  $("group-panel-error").textContent = "";
  renderGroupPanel(panelGroup);
}

// --- Wiring ---------------------------------------------------------------------------

/** Hooks the forms to the page. */
export function setupPanels(hooks) {
  app = hooks;
  $("edit-profile").addEventListener("click", () => {
    if ($("profile-form").hidden) openProfileForm();
    else $("profile-form").hidden = true;
  });
  $("profile-cancel").addEventListener("click", () => ($("profile-form").hidden = true));
  $("profile-avatar").addEventListener("change", (event) => {
    const [file] = event.target.files;
    event.target.value = "";
    if (file) pickAvatar(file);
  });
  $("profile-avatar-pick").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    $("profile-avatar").click();
  });
  $("profile-avatar-remove").addEventListener("click", () => {
    avatarChoice = null;
    renderProfileForm();
  });
  $("profile-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveProfile();
  });

  $("new-group").addEventListener("click", () => {
    $("group-form").hidden = !$("group-form").hidden;
    $("group-error").textContent = "";
    if (!$("group-form").hidden) $("group-name").focus();
  });
  $("group-cancel").addEventListener("click", () => ($("group-form").hidden = true));
  $("group-form").addEventListener("submit", (event) => {
    event.preventDefault();
    createGroup();
  });

  $("group-info").addEventListener("click", toggleGroupPanel);
  $("add-member-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("add-member-input").value.trim();
    if (!USER_ID.test(user) || panelGroup === null) return;
    const client = app.client();
    changeMembers(async () => {
      await client.groups.addMember(panelGroup, user);
      $("add-member-input").value = "";
    });
  });
  $("leave-group").addEventListener("click", () => {
    const client = app.client();
    const group = panelGroup;
    if (group === null) return;
    changeMembers(async () => {
      await client.groups.removeMember(group, client.user);
      $("group-panel").hidden = true;
      app.closeChat();
    });
  });

  $("viewer").addEventListener("click", closeViewer);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeViewer();
  });
}
