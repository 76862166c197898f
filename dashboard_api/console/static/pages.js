// The console's pages besides the board, the order board and "my orders": each module
// registers itself with registerView() (shell.js) when imported here.
import "./reopens.js";
import "./upgrades.js";
import "./household.js";
import "./city.js";
import "./fleet.js";
import "./admin.js";
