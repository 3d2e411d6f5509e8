// Writes the vectors in yjs-13.6.33.rs (npm install yjs@13.6.33; node gen.js).
const Y = require('yjs');
const hex = u => Buffer.from(u).toString('hex');
const a = new Y.Doc(); a.clientID = 1;
const b = new Y.Doc(); b.clientID = 2;
const ups = [];
a.on('update', u => ups.push(['a', u]));
a.getText('t').insert(0, 'hello wörld 😀');
a.getMap('m').set('k', {a: [1, 2, {b: 'c'}], n: null, f: 1.5, big: 2 ** 40, yes: true, neg: -7});
a.getMap('m').set('bin', new Uint8Array([1, 2, 3]));
a.getArray('a').push([1, 'two', [3]]);
const frag = a.getXmlFragment('x');
const p = new Y.XmlElement('p'); p.setAttribute('class', 'c');
const xt = new Y.XmlText(); xt.insert(0, 'bold', {bold: true});
p.insert(0, [xt]); frag.insert(0, [p]);
a.getText('t').delete(0, 1);
a.getText('t').insert(0, 'H');
a.getText('t').format(0, 5, {italic: true});
a.getText('t').insertEmbed(5, {image: 'x.png'});
const snapA = Y.encodeStateAsUpdate(a);
Y.applyUpdate(b, snapA);
const bups = [];
b.on('update', u => bups.push(u));
b.getText('t').insert(0, '>> ');
b.getMap('m').delete('bin');
b.getArray('a').delete(0, 1);
const svA = Y.encodeStateVector(a);
const diffForA = Y.encodeStateAsUpdate(b, svA);
const hook = new Y.Doc(); hook.clientID = 3;
hook.getXmlFragment('x').insert(0, [new Y.XmlHook('h')]);
const hookUp = Y.encodeStateAsUpdate(hook);
const all = new Y.Doc(); Y.applyUpdate(all, snapA); bups.forEach(u => Y.applyUpdate(all, u));
console.log(JSON.stringify({
  a_updates: ups.map(([_, u]) => hex(u)),
  snapA: hex(snapA),
  b_updates: bups.map(hex),
  svA: hex(svA),
  diffForA: hex(diffForA),
  hook: hex(hookUp),
  text: all.getText('t').toString(),
  delta: all.getText('t').toDelta(),
  m: all.getMap('m').toJSON(),
  arr: all.getArray('a').toJSON(),
  x: all.getXmlFragment('x').toString(),
  sv: hex(Y.encodeStateVector(all)),
}, null, 1));
